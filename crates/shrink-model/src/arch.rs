//! Architectures as data: one [`Family`] table entry per decoder family.
//!
//! A family says how its tensors are named (Hugging Face and llama.cpp's GGUF names), which
//! linears a block has and which of them read one input (the calibration groups, in forward
//! order), which norms sit where and whether they scale by `w` or `1 + w`, the activation, and
//! the attention and embedding features. Everything else — the forward pass
//! ([`crate::layer::DecoderLayer::forward`]), calibration hooks, the pipeline, export, `inspect` —
//! works from the [`Layout`] that [`layer_layout`] builds from the table and a config, and never
//! names a family. Adding a dense family is one entry in [`FAMILIES`].
//!
//! This follows GPTQModel's per-family `layer_modules` lists (groups of linears sharing an input)
//! and llama.cpp's `LLM_TENSOR_NAMES` table (a tensor role maps to a per-architecture name).
use crate::config::ModelConfig;

/// How a norm's weight scales the normalised input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormStyle {
    /// `x_hat * w` (Llama, Qwen, Phi, Mistral).
    Plain,
    /// `x_hat * (1 + w)`: Gemma stores the offset from 1 (llama.cpp's converter adds the 1, so its
    /// GGUF files hold the effective `1 + w`).
    OnePlus,
}

/// The gated MLP's activation: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (`silu`), SwiGLU.
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, Gemma), GeGLU.
    GeluTanh,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

/// What a linear does in the block (the forward pass finds its weights by role, as llama.cpp's
/// graph builders find `LLM_TENSOR_ATTN_Q` and so on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Q,
    K,
    V,
    /// q, k and v fused into one weight (rows: q, then k, then v).
    Qkv,
    O,
    Gate,
    Up,
    /// gate and up fused into one weight (rows: gate, then up).
    GateUp,
    Down,
    /// The MoE router (`[n_experts, hidden]`).
    Router,
}

/// Where a norm sits in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormSlot {
    /// Before attention (`input_layernorm`).
    AttnIn,
    /// On the attention output before the residual add (Gemma's sandwich norm).
    AttnOut,
    /// Before the MLP (`post_attention_layernorm` in Llama, `pre_feedforward_layernorm` in Gemma).
    FfnIn,
    /// On the MLP output before the residual add (Gemma).
    FfnOut,
    /// Per-head RMSNorm of the queries before rope (Qwen3, Gemma 3).
    Q,
    /// Per-head RMSNorm of the keys before rope.
    K,
}

/// How a family names its attention linears (under `self_attn.`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnLinears {
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj`.
    Separate,
    /// `qkv_proj`, `o_proj` (Phi-3).
    Fused,
}

/// How a family names its dense MLP linears (under `mlp.`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpLinears {
    /// `gate_proj`, `up_proj`, `down_proj`.
    Separate,
    /// `gate_up_proj`, `down_proj` (Phi-3).
    Fused,
}

/// How a Mixture-of-Experts block names its router and experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeNames {
    /// The block's module (`mlp` in Qwen3-MoE, `block_sparse_moe` in Mixtral).
    pub block: &'static str,
    /// The router under the block (`gate`).
    pub router: &'static str,
    /// Expert linears under `experts.{e}.`: gate, up, down.
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// How the router's probabilities are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// softmax over all experts, top-k, renormalised over the k when the config's
    /// `norm_topk_prob` says so (Qwen3-MoE).
    SoftmaxTopK,
    /// softmax over all experts, top-k, always renormalised (Mixtral; the same as softmax over
    /// the top-k logits).
    SoftmaxTopKNorm,
}

/// One decoder family.
#[derive(Debug, PartialEq)]
pub struct Family {
    /// shrink's name for it (also the Hugging Face `model_type` it writes).
    pub name: &'static str,
    /// `model_type` values in config.json that mean this family.
    pub model_types: &'static [&'static str],
    /// `architectures` class names in config.json (the first is written).
    pub hf_classes: &'static [&'static str],
    /// `general.architecture` written to GGUF.
    pub gguf_arch: &'static str,
    /// llama.cpp's converter permutes q/k rows for this GGUF architecture (rope on adjacent
    /// pairs instead of halves); loading undoes it and export redoes it.
    pub gguf_permutes_qk: bool,
    pub attn: AttnLinears,
    pub mlp: MlpLinears,
    pub moe: Option<(MoeNames, Routing)>,
    /// Norms of a block: slot, Hugging Face path under `model.layers.{i}.`, GGUF name under
    /// `blk.{i}.`.
    pub norms: &'static [(NormSlot, &'static str, &'static str)],
    pub norm_style: NormStyle,
    /// q/k/v carry biases whatever the config says (Qwen2).
    pub qkv_bias_always: bool,
    /// The activation when config.json names none.
    pub default_act: Activation,
    /// Embeddings are multiplied by sqrt(hidden_size) (Gemma).
    pub embed_scale: bool,
    /// The config's `attn_logit_softcapping` caps attention scores (Gemma 2 does; transformers'
    /// Gemma 3 reads the key but never applies it, and neither does llama.cpp's gemma3 graph).
    pub attn_softcap: bool,
    /// q_norm / k_norm normalise the whole projection (`num_heads * head_dim` values, OLMoE)
    /// instead of each head.
    pub qk_norm_whole: bool,
    /// llama.cpp's graph for this GGUF architecture renormalises the top-k router weights
    /// (qwen3moe, Mixtral's llama; not olmoe): the routing read from a GGUF without an
    /// `expert_weights_norm` key.
    pub gguf_renormalizes_topk: bool,
}

const LLAMA_NORMS: &[(NormSlot, &str, &str)] = &[
    (NormSlot::AttnIn, "input_layernorm", "attn_norm"),
    (NormSlot::FfnIn, "post_attention_layernorm", "ffn_norm"),
];
const QK_NORMED: &[(NormSlot, &str, &str)] = &[
    (NormSlot::AttnIn, "input_layernorm", "attn_norm"),
    (NormSlot::Q, "self_attn.q_norm", "attn_q_norm"),
    (NormSlot::K, "self_attn.k_norm", "attn_k_norm"),
    (NormSlot::FfnIn, "post_attention_layernorm", "ffn_norm"),
];
const GEMMA3_NORMS: &[(NormSlot, &str, &str)] = &[
    (NormSlot::AttnIn, "input_layernorm", "attn_norm"),
    (NormSlot::Q, "self_attn.q_norm", "attn_q_norm"),
    (NormSlot::K, "self_attn.k_norm", "attn_k_norm"),
    (
        NormSlot::AttnOut,
        "post_attention_layernorm",
        "post_attention_norm",
    ),
    (NormSlot::FfnIn, "pre_feedforward_layernorm", "ffn_norm"),
    (
        NormSlot::FfnOut,
        "post_feedforward_layernorm",
        "post_ffw_norm",
    ),
];

/// Expert names of Qwen3-MoE and OLMoE: `mlp.gate`, `mlp.experts.{e}.{gate,up,down}_proj`.
const QWEN_MOE_NAMES: MoeNames = MoeNames {
    block: "mlp",
    router: "gate",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

const LLAMA_LIKE: Family = Family {
    name: "llama",
    model_types: &["llama"],
    hf_classes: &["LlamaForCausalLM"],
    gguf_arch: "llama",
    gguf_permutes_qk: true,
    attn: AttnLinears::Separate,
    mlp: MlpLinears::Separate,
    moe: None,
    norms: LLAMA_NORMS,
    norm_style: NormStyle::Plain,
    qkv_bias_always: false,
    default_act: Activation::Silu,
    embed_scale: false,
    attn_softcap: false,
    qk_norm_whole: false,
    gguf_renormalizes_topk: true,
};

/// Every supported family. llama.cpp writes Mistral as `llama` and Mixtral as `llama` with
/// experts; [`Family::from_gguf`] tells them apart.
pub static FAMILIES: &[Family] = &[
    // Llama 1/2/3 and models built on it (SmolLM, TinyLlama, ...).
    LLAMA_LIKE,
    Family {
        name: "mistral",
        model_types: &["mistral"],
        hf_classes: &["MistralForCausalLM"],
        ..LLAMA_LIKE
    },
    Family {
        name: "qwen2",
        model_types: &["qwen2"],
        hf_classes: &["Qwen2ForCausalLM"],
        gguf_arch: "qwen2",
        gguf_permutes_qk: false,
        qkv_bias_always: true,
        ..LLAMA_LIKE
    },
    Family {
        name: "qwen3",
        model_types: &["qwen3"],
        hf_classes: &["Qwen3ForCausalLM"],
        gguf_arch: "qwen3",
        gguf_permutes_qk: false,
        norms: QK_NORMED,
        ..LLAMA_LIKE
    },
    Family {
        name: "gemma3_text",
        model_types: &["gemma3_text"],
        hf_classes: &["Gemma3ForCausalLM"],
        gguf_arch: "gemma3",
        gguf_permutes_qk: false,
        norms: GEMMA3_NORMS,
        norm_style: NormStyle::OnePlus,
        default_act: Activation::GeluTanh,
        embed_scale: true,
        ..LLAMA_LIKE
    },
    Family {
        name: "phi3",
        model_types: &["phi3"],
        hf_classes: &["Phi3ForCausalLM"],
        gguf_arch: "phi3",
        gguf_permutes_qk: false,
        attn: AttnLinears::Fused,
        mlp: MlpLinears::Fused,
        ..LLAMA_LIKE
    },
    Family {
        name: "qwen3_moe",
        model_types: &["qwen3_moe"],
        hf_classes: &["Qwen3MoeForCausalLM"],
        gguf_arch: "qwen3moe",
        gguf_permutes_qk: false,
        norms: QK_NORMED,
        moe: Some((QWEN_MOE_NAMES, Routing::SoftmaxTopK)),
        ..LLAMA_LIKE
    },
    Family {
        name: "olmoe",
        model_types: &["olmoe"],
        hf_classes: &["OlmoeForCausalLM"],
        gguf_arch: "olmoe",
        gguf_permutes_qk: false,
        norms: QK_NORMED,
        qk_norm_whole: true,
        moe: Some((QWEN_MOE_NAMES, Routing::SoftmaxTopK)),
        gguf_renormalizes_topk: false,
        ..LLAMA_LIKE
    },
    Family {
        name: "mixtral",
        model_types: &["mixtral"],
        hf_classes: &["MixtralForCausalLM"],
        moe: Some((
            MoeNames {
                block: "block_sparse_moe",
                router: "gate",
                gate: "w1",
                up: "w3",
                down: "w2",
            },
            Routing::SoftmaxTopKNorm,
        )),
        ..LLAMA_LIKE
    },
];

/// A supported family: a reference into [`FAMILIES`].
#[derive(Clone, Copy)]
pub struct Arch(&'static Family);

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Arch({})", self.0.name)
    }
}

impl PartialEq for Arch {
    fn eq(&self, o: &Arch) -> bool {
        std::ptr::eq(self.0, o.0)
    }
}
impl Eq for Arch {}

impl std::ops::Deref for Arch {
    type Target = Family;
    fn deref(&self) -> &Family {
        self.0
    }
}

impl Arch {
    /// The family called `name` in [`FAMILIES`] (panics on a name not in the table: for code
    /// and tests that name a family).
    pub fn named(name: &str) -> Arch {
        Arch::by_name(name).unwrap_or_else(|| panic!("no family '{name}' in arch::FAMILIES"))
    }
    pub fn by_name(name: &str) -> Option<Arch> {
        FAMILIES.iter().find(|f| f.name == name).map(Arch)
    }
    pub fn from_model_type(t: &str) -> Option<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.model_types.contains(&t))
            .map(Arch)
    }
    pub fn from_hf_class(c: &str) -> Option<Arch> {
        FAMILIES
            .iter()
            .find(|f| f.hf_classes.contains(&c))
            .map(Arch)
    }
    /// The family of a GGUF file's `general.architecture`; `experts` tells llama.cpp's `llama`
    /// with experts (Mixtral) from plain Llama.
    pub fn from_gguf(a: &str, experts: bool) -> Option<Arch> {
        match (a, experts) {
            ("llama", true) => Arch::by_name("mixtral"),
            ("llama", false) => Arch::by_name("llama"),
            _ => FAMILIES
                .iter()
                .find(|f| f.gguf_arch == a && f.name != "mistral")
                .map(Arch),
        }
    }
    /// The `model_type` values shrink reads, for messages.
    pub fn supported() -> String {
        FAMILIES
            .iter()
            .flat_map(|f| f.model_types.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// The GGUF architectures shrink reads, for messages.
    pub fn supported_gguf() -> String {
        let mut v: Vec<&str> = FAMILIES.iter().map(|f| f.gguf_arch).collect();
        v.dedup();
        v.join(", ")
    }
    pub fn family(self) -> &'static Family {
        self.0
    }
    pub fn model_type(self) -> &'static str {
        self.0.model_types[0]
    }
    pub fn hf_class(self) -> &'static str {
        self.0.hf_classes[0]
    }
    pub fn gguf_name(self) -> &'static str {
        self.0.gguf_arch
    }
    pub fn gguf_permutes_qk(self) -> bool {
        self.0.gguf_permutes_qk
    }
    pub fn is_moe(self) -> bool {
        self.0.moe.is_some()
    }
}

/// One linear of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearSpec {
    pub role: Role,
    /// The expert it belongs to, in a MoE block.
    pub expert: Option<usize>,
    /// Path under `model.layers.{i}.`, e.g. `self_attn.q_proj`, `mlp.experts.5.down_proj`.
    pub path: String,
    /// GGUF name under `blk.{i}.` (for an expert, the stacked tensor `ffn_down_exps`).
    pub gguf: String,
    /// `[d_out, d_in]`.
    pub shape: [usize; 2],
    pub bias: bool,
    /// Compressed by default (the MoE router is not).
    pub compress: bool,
}

/// Linears that read one input, in forward order.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    /// Indices into [`Layout::linears`].
    pub linears: Vec<usize>,
    /// The expert whose routed tokens form this group's input.
    pub expert: Option<usize>,
}

/// A norm of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct NormSpec {
    pub slot: NormSlot,
    pub path: String,
    pub gguf: &'static str,
    pub len: usize,
}

/// What produces a group's input ([`Layout::input_producer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputProducer {
    /// Norm `i` of [`Layout::norms`].
    Norm(usize),
    /// Output rows `rows` of linear `linear` (with its bias).
    Rows {
        linear: usize,
        rows: std::ops::Range<usize>,
    },
}

/// What one decoder layer holds under a config: its linears, its groups in the order the forward
/// pass visits them, and its norms.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub linears: Vec<LinearSpec>,
    pub groups: Vec<GroupSpec>,
    pub norms: Vec<NormSpec>,
}

impl Layout {
    /// The index of the (non-expert) linear with `role`.
    pub fn find(&self, role: Role) -> Option<usize> {
        self.linears
            .iter()
            .position(|l| l.role == role && l.expert.is_none())
    }
    /// The index of expert `e`'s linear with `role`.
    pub fn find_expert(&self, e: usize, role: Role) -> Option<usize> {
        self.linears
            .iter()
            .position(|l| l.role == role && l.expert == Some(e))
    }
    pub fn norm(&self, slot: NormSlot) -> Option<usize> {
        self.norms.iter().position(|n| n.slot == slot)
    }
    /// What produces the input of group `g`, where a per-channel scale of that input can be
    /// folded exactly (AWQ, SmoothQuant): dividing the producer's output channel `j` by `s_j`
    /// and multiplying column `j` of every linear of the group by `s_j` leaves the layer's
    /// function unchanged. Derived from the roles, so every family of the table gets it:
    ///
    /// - q/k/v (or a fused qkv) and a dense MLP's gate/up (or gate_up): the norm before them
    ///   ([`NormSlot::AttnIn`], [`NormSlot::FfnIn`]), as its effective multiplier (`1 + w`
    ///   families included);
    /// - o_proj: the value rows (of v_proj, or of a fused qkv) — only when each value channel
    ///   feeds one attention-output channel, i.e. without grouped-query attention;
    /// - down_proj: the up rows of the same MLP or expert (of up_proj, or the second half of a
    ///   fused gate_up): `act(gate) * up` is linear in `up`'s output channel.
    ///
    /// `None` where no exact fold exists: o_proj under grouped-query attention (one value
    /// channel feeds several heads), a MoE expert's gate/up (their input norm also feeds the
    /// router and every other expert), and the router itself.
    pub fn input_producer(&self, g: usize) -> Option<InputProducer> {
        let spec = &self.groups[g];
        let first = &self.linears[*spec.linears.first()?];
        let moe_layer = self.linears.iter().any(|l| l.role == Role::Router);
        match first.role {
            Role::Q | Role::K | Role::V | Role::Qkv => {
                self.norm(NormSlot::AttnIn).map(InputProducer::Norm)
            }
            Role::Gate | Role::Up | Role::GateUp if spec.expert.is_none() && !moe_layer => {
                self.norm(NormSlot::FfnIn).map(InputProducer::Norm)
            }
            Role::O => {
                let o_in = first.shape[1];
                if let Some(v) = self.find(Role::V) {
                    (self.linears[v].shape[0] == o_in).then_some(InputProducer::Rows {
                        linear: v,
                        rows: 0..o_in,
                    })
                } else {
                    let f = self.find(Role::Qkv)?;
                    // rows: q (= o_in), then k and v of kv rows each
                    let kv = self.linears[f].shape[0].checked_sub(o_in)? / 2;
                    (kv == o_in).then_some(InputProducer::Rows {
                        linear: f,
                        rows: o_in + kv..o_in + 2 * kv,
                    })
                }
            }
            Role::Down => {
                let d_in = first.shape[1];
                let up = match spec.expert {
                    Some(e) => self.find_expert(e, Role::Up),
                    None => self.find(Role::Up),
                };
                match up {
                    Some(u) => (self.linears[u].shape[0] == d_in).then_some(InputProducer::Rows {
                        linear: u,
                        rows: 0..d_in,
                    }),
                    None => {
                        let f = self.find(Role::GateUp)?;
                        (self.linears[f].shape[0] == 2 * d_in).then_some(InputProducer::Rows {
                            linear: f,
                            rows: d_in..2 * d_in,
                        })
                    }
                }
            }
            _ => None,
        }
    }

    /// A label for a group's linears (`q_proj/k_proj/v_proj`, `experts.3.gate_proj/up_proj`).
    pub fn group_label(&self, g: usize) -> String {
        let paths: Vec<&str> = self.groups[g]
            .linears
            .iter()
            .map(|&i| self.linears[i].path.as_str())
            .collect();
        let first = paths[0];
        let (prefix, _) = first.rsplit_once('.').unwrap_or(("", first));
        let prefix = prefix
            .strip_prefix("self_attn")
            .or_else(|| prefix.strip_prefix("mlp"))
            .unwrap_or(prefix)
            .trim_start_matches('.');
        let names: Vec<&str> = paths
            .iter()
            .map(|p| p.rsplit_once('.').map_or(*p, |(_, n)| n))
            .collect();
        if prefix.is_empty() {
            names.join("/")
        } else {
            format!("{prefix}.{}", names.join("/"))
        }
    }
}

/// The layout of layer `layer` under `cfg`.
pub fn layer_layout(cfg: &ModelConfig, layer: usize) -> Layout {
    let f = cfg.arch.family();
    let (h, q, kv) = (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let mut linears = Vec::new();
    let mut groups = Vec::new();
    let lin = |role, expert, path: String, gguf: &str, shape, bias, compress| LinearSpec {
        role,
        expert,
        path,
        gguf: gguf.to_string(),
        shape,
        bias,
        compress,
    };
    let qkv_bias = cfg.qkv_bias;
    let push_group = |linears: &mut Vec<LinearSpec>,
                      groups: &mut Vec<GroupSpec>,
                      new: Vec<LinearSpec>,
                      expert: Option<usize>| {
        let start = linears.len();
        linears.extend(new);
        groups.push(GroupSpec {
            linears: (start..linears.len()).collect(),
            expert,
        });
    };
    let attn_in = match f.attn {
        AttnLinears::Separate => vec![
            lin(
                Role::Q,
                None,
                "self_attn.q_proj".into(),
                "attn_q",
                [q, h],
                qkv_bias,
                true,
            ),
            lin(
                Role::K,
                None,
                "self_attn.k_proj".into(),
                "attn_k",
                [kv, h],
                qkv_bias,
                true,
            ),
            lin(
                Role::V,
                None,
                "self_attn.v_proj".into(),
                "attn_v",
                [kv, h],
                qkv_bias,
                true,
            ),
        ],
        AttnLinears::Fused => vec![lin(
            Role::Qkv,
            None,
            "self_attn.qkv_proj".into(),
            "attn_qkv",
            [q + 2 * kv, h],
            qkv_bias,
            true,
        )],
    };
    push_group(&mut linears, &mut groups, attn_in, None);
    let o = lin(
        Role::O,
        None,
        "self_attn.o_proj".into(),
        "attn_output",
        [h, q],
        cfg.o_bias,
        true,
    );
    push_group(&mut linears, &mut groups, vec![o], None);
    let mb = cfg.mlp_bias;
    match (&cfg.moe, f.moe) {
        (Some(m), Some((names, _))) if m.is_moe_layer(layer) => {
            let b = names.block;
            let router = lin(
                Role::Router,
                None,
                format!("{b}.{}", names.router),
                "ffn_gate_inp",
                [m.num_experts, h],
                false,
                false,
            );
            push_group(&mut linears, &mut groups, vec![router], None);
            let fi = m.expert_intermediate;
            for e in 0..m.num_experts {
                let p = |n: &str| format!("{b}.experts.{e}.{n}");
                let gu = vec![
                    lin(
                        Role::Gate,
                        Some(e),
                        p(names.gate),
                        "ffn_gate_exps",
                        [fi, h],
                        false,
                        true,
                    ),
                    lin(
                        Role::Up,
                        Some(e),
                        p(names.up),
                        "ffn_up_exps",
                        [fi, h],
                        false,
                        true,
                    ),
                ];
                push_group(&mut linears, &mut groups, gu, Some(e));
                let d = lin(
                    Role::Down,
                    Some(e),
                    p(names.down),
                    "ffn_down_exps",
                    [h, fi],
                    false,
                    true,
                );
                push_group(&mut linears, &mut groups, vec![d], Some(e));
            }
        }
        _ => {
            let i = cfg.intermediate_size;
            let mlp_in = match f.mlp {
                MlpLinears::Separate => vec![
                    lin(
                        Role::Gate,
                        None,
                        "mlp.gate_proj".into(),
                        "ffn_gate",
                        [i, h],
                        mb,
                        true,
                    ),
                    lin(
                        Role::Up,
                        None,
                        "mlp.up_proj".into(),
                        "ffn_up",
                        [i, h],
                        mb,
                        true,
                    ),
                ],
                MlpLinears::Fused => vec![lin(
                    Role::GateUp,
                    None,
                    "mlp.gate_up_proj".into(),
                    "ffn_up",
                    [2 * i, h],
                    mb,
                    true,
                )],
            };
            push_group(&mut linears, &mut groups, mlp_in, None);
            let d = lin(
                Role::Down,
                None,
                "mlp.down_proj".into(),
                "ffn_down",
                [h, i],
                mb,
                true,
            );
            push_group(&mut linears, &mut groups, vec![d], None);
        }
    }
    let norms = f
        .norms
        .iter()
        .map(|&(slot, path, gguf)| NormSpec {
            slot,
            path: path.to_string(),
            gguf,
            len: match slot {
                NormSlot::Q if f.qk_norm_whole => cfg.num_heads * cfg.head_dim,
                NormSlot::K if f.qk_norm_whole => cfg.num_kv_heads * cfg.head_dim,
                NormSlot::Q | NormSlot::K => cfg.head_dim,
                _ => h,
            },
        })
        .collect();
    Layout {
        linears,
        groups,
        norms,
    }
}

pub const HF_EMBED: &str = "model.embed_tokens.weight";
pub const HF_NORM: &str = "model.norm.weight";
pub const HF_LM_HEAD: &str = "lm_head.weight";

/// Hugging Face name of a tensor of layer `layer` at `path` (`suffix` = "weight" or "bias").
pub fn hf_layer_tensor(layer: usize, path: &str, suffix: &str) -> String {
    format!("model.layers.{layer}.{path}.{suffix}")
}

/// Where a Hugging Face tensor lives in a GGUF file: the tensor's name and, for an expert's
/// linear, its index in the stacked `[n_experts, d_out, d_in]` tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufRef {
    pub name: String,
    pub expert: Option<usize>,
}

/// What kind of tensor an entry of [`tensor_table`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Embedding,
    FinalNorm,
    Head,
    /// A layer norm (its weight is `1 + w` in effect under [`NormStyle::OnePlus`]).
    Norm(NormSlot),
    /// Linear `index` of the layer's [`Layout`].
    LinearWeight(usize),
    LinearBias(usize),
}

/// One tensor of a model: its Hugging Face name and shape, its GGUF location and kind.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub hf: String,
    pub gguf: GgufRef,
    pub shape: Vec<usize>,
    pub layer: Option<usize>,
    pub kind: TensorKind,
}

/// The entry of the embedding, the final norm or the head.
fn global_entry(cfg: &ModelConfig, kind: TensorKind) -> TensorEntry {
    let (hf, gguf, shape) = match kind {
        TensorKind::Embedding => (
            HF_EMBED,
            "token_embd.weight",
            vec![cfg.vocab_size, cfg.hidden_size],
        ),
        TensorKind::FinalNorm => (HF_NORM, "output_norm.weight", vec![cfg.hidden_size]),
        _ => (
            HF_LM_HEAD,
            "output.weight",
            vec![cfg.vocab_size, cfg.hidden_size],
        ),
    };
    TensorEntry {
        hf: hf.into(),
        gguf: GgufRef {
            name: gguf.into(),
            expert: None,
        },
        shape,
        layer: None,
        kind,
    }
}

/// Every tensor a model with this config has, in a stable order (embedding, each layer's norms
/// and linears, final norm, head).
pub fn tensor_table(cfg: &ModelConfig) -> Vec<TensorEntry> {
    let mut v = vec![global_entry(cfg, TensorKind::Embedding)];
    for i in 0..cfg.num_layers {
        v.extend(layer_tensors(cfg, i, &layer_layout(cfg, i)));
    }
    v.push(global_entry(cfg, TensorKind::FinalNorm));
    if !cfg.tie_word_embeddings {
        v.push(global_entry(cfg, TensorKind::Head));
    }
    v
}

/// Refuses merging layer `b` into layer `a` (LaCo's layer collapse, [`crate::ModelSource::merge_layers`])
/// when their tensors differ in name or shape (a dense and a MoE MLP, say).
pub fn check_mergeable(cfg: &ModelConfig, a: usize, b: usize) -> anyhow::Result<()> {
    let strip = |i: usize| -> Vec<(String, Vec<usize>)> {
        let pre = format!("model.layers.{i}.");
        layer_tensors(cfg, i, &layer_layout(cfg, i))
            .into_iter()
            .map(|e| {
                (
                    e.hf.strip_prefix(&pre).unwrap_or(&e.hf).to_string(),
                    e.shape,
                )
            })
            .collect()
    };
    if strip(a) != strip(b) {
        anyhow::bail!(
            "layers {a} and {b} have different tensors (e.g. a dense and a MoE MLP): they cannot \
             be merged"
        );
    }
    Ok(())
}

/// The tensors of layer `i` with layout `lay`: the input norm, the linears (weight, then bias),
/// then the other norms (the order llama.cpp's converter writes a Llama block in).
pub fn layer_tensors(_cfg: &ModelConfig, i: usize, lay: &Layout) -> Vec<TensorEntry> {
    let norm = |n: &NormSpec| TensorEntry {
        hf: hf_layer_tensor(i, &n.path, "weight"),
        gguf: GgufRef {
            name: format!("blk.{i}.{}.weight", n.gguf),
            expert: None,
        },
        shape: vec![n.len],
        layer: Some(i),
        kind: TensorKind::Norm(n.slot),
    };
    let mut v: Vec<TensorEntry> = lay
        .norms
        .iter()
        .filter(|n| n.slot == NormSlot::AttnIn)
        .map(norm)
        .collect();
    for (k, l) in lay.linears.iter().enumerate() {
        let suffixes: &[&str] = if l.bias {
            &["weight", "bias"]
        } else {
            &["weight"]
        };
        for &s in suffixes {
            v.push(TensorEntry {
                hf: hf_layer_tensor(i, &l.path, s),
                gguf: GgufRef {
                    name: format!("blk.{i}.{}.{s}", l.gguf),
                    expert: l.expert,
                },
                shape: if s == "weight" {
                    l.shape.to_vec()
                } else {
                    vec![l.shape[0]]
                },
                layer: Some(i),
                kind: if s == "weight" {
                    TensorKind::LinearWeight(k)
                } else {
                    TensorKind::LinearBias(k)
                },
            });
        }
    }
    v.extend(
        lay.norms
            .iter()
            .filter(|n| n.slot != NormSlot::AttnIn)
            .map(norm),
    );
    v
}

/// The entry of one tensor under `cfg` (looked up in its layer only), if the model has it.
pub fn tensor_entry(cfg: &ModelConfig, name: &str) -> Option<TensorEntry> {
    match name {
        HF_EMBED => return Some(global_entry(cfg, TensorKind::Embedding)),
        HF_NORM => return Some(global_entry(cfg, TensorKind::FinalNorm)),
        HF_LM_HEAD if !cfg.tie_word_embeddings => return Some(global_entry(cfg, TensorKind::Head)),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, _) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    if layer >= cfg.num_layers {
        return None;
    }
    layer_tensors(cfg, layer, &layer_layout(cfg, layer))
        .into_iter()
        .find(|e| e.hf == name)
}

/// All Hugging Face tensor names a model with this config has, in a stable order.
pub fn hf_tensor_names(cfg: &ModelConfig) -> Vec<String> {
    tensor_table(cfg).into_iter().map(|e| e.hf).collect()
}

/// Maps a Hugging Face tensor name to its place in a GGUF file under `cfg`, if it has one.
pub fn hf_to_gguf(cfg: &ModelConfig, name: &str) -> Option<GgufRef> {
    tensor_entry(cfg, name).map(|e| e.gguf)
}
