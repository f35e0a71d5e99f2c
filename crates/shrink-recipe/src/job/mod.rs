//! The compress job: calibrate, compress layer by layer, write a Hugging Face directory, the
//! quantized form, `report.json` and the `recipe.toml` that reproduces the run.
//!
//! [`CompressJob`] holds every setting `shrink compress` takes (it is the command's flags: the
//! command line is a thin layer over [`run`]), [`CompressJob::from_args`] builds one from the same
//! flags for a program (a sweep, a test), and [`run`] does the work and returns the output's
//! path and report. The allocators (OWL, search, agent), layer dropping and merging, the
//! perplexity guard and `--resume` all run in here.
pub mod checkpoint;
mod output;
pub mod target;
pub mod ui;

use crate::layers::LayerScore;
use crate::{Plan, Recipe, Slot, Stage};
use anyhow::{bail, Context, Result};
use checkpoint::Checkpoint;
use output::{holdin_perplexity, write_pruned, write_quantized, LayerFiles};
use serde_json::json;
use shrink_calib::{CalibSet, TextSource, DEFAULT_NSAMPLES, DEFAULT_SEED, DEFAULT_SEQLEN};
use shrink_formats::{write_hf_files, write_json, OutputDir};
use shrink_model::source::{Overlay, SafetensorsSource};
use shrink_model::ModelSource;
use shrink_pipeline::Assign;
use std::collections::BTreeMap;
use std::path::PathBuf;
pub use ui::{Bar, Silent, Ui};

/// What a finished job wrote: the output directory and its report (report.json's contents).
#[derive(Debug)]
pub struct Outcome {
    pub path: PathBuf,
    pub report: serde_json::Value,
}

/// A comma-separated list of values for a flag (`--search-bits 2,3,4`).
pub fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<T>()
                .map_err(|_| anyhow::anyhow!("{what}: '{p}' is not a number"))
        })
        .collect()
}

#[derive(clap::Args, Clone, Debug)]
#[command(after_long_help = "EXAMPLES:\n  \
shrink compress --model models/SmolLM2-135M-Instruct.Q4_1.gguf --method gptq --bits 4 --group-size 64 \\\n      \
--calib data/calib.txt --nsamples 64 --seqlen 512 --out out/smollm2-gptq-w4g64 --eval data/eval.txt\n  \
shrink compress --model MODEL --method sparsegpt --sparsity 0.5 --calib data/calib.txt --out DIR\n  \
shrink compress --model MODEL --method wanda --pattern 2:4 --bits 4 --group-size 64 --calib data/calib.txt --out DIR\n  \
shrink compress --model MODEL --recipe recipe.toml --out DIR\n\n\
METHODS:\n  \
rtn          round to nearest (no calibration statistics)\n  \
gptq         GPTQ: quantize column by column, spreading each rounding error with the inverse Hessian\n  \
awq          AWQ then round to nearest: per-channel input scales (s = mean|x|^a, a searched on\n               \
each group's output error) and per-group clipping, folded into the model; --awq puts\n               \
the same search before any quantizing method (--awq --method gptq)\n  \
magnitude    prune the smallest |W| (per layer; --scope row for per output row)\n  \
wanda        prune the smallest |W| * ||X_j|| per output row (no weight update)\n  \
sparsegpt    prune column by column with the inverse Hessian, adaptive mask per block of 128\n  \
obc          exact greedy OBS/OBQ solver, row by row: cost d_out * d_in^3, layers with d_in <= 1024\n  \
Pruning takes --sparsity FRACTION or --pattern N:M (keep N of every M: 2:4, 4:8). Adding --bits\n  \
quantizes too: sparsegpt and obc quantize the kept weights in the same pass (joint mode);\n  \
magnitude and wanda are followed by GPTQ on the kept weights (pruned weights stay 0).\n\n\
RECIPE (TOML; command-line flags override it):\n  \
[calibration]\n  file = \"data/calib.txt\"   # or a .jsonl file (with field = \"text\") or a directory of .txt\n  \
nsamples = 64\n  seqlen = 512\n  seed = 0\n\n  \
[[stage]]                   # stages run on each linear in turn; a pruning stage's zeros are kept\n  \
method = \"gptq\"            # rtn | gptq | magnitude | wanda | sparsegpt | obc\n  bits = 4\n  \
group_size = 64             # omit for per-output-channel\n  sym = false\n  act_order = \"static\"        # static | dynamic | none\n  \
static_groups = false\n  damp = 0.01\n  block_size = 128\n  mse = false\n  \
# sparsity = 0.5  or  pattern = \"2:4\";  scope = \"layer\" | \"row\" (magnitude)\n  \
targets = ['mlp']           # optional: only these linears (default all)\n  \
ignore = ['experts\\.']     # optional: not these\n\n  \
[[override]]                # other settings for the linears a pattern matches\n  \
match = 'down_proj'\n  bits = 8                    # any stage key; stage = N in a recipe of several stages\n\n  \
ignore = ['layers\\.0\\.'] # top level (before any table): left exactly as they are\n  \
smooth = 0.5                # top level: SmoothQuant's alpha, before AWQ and the stages\n\n  \
[awq]                       # AWQ's scales and clipping before the stages (as --awq)\n  \
duo_scaling = false         # clip = true, n_grid = 20\n\n  \
Patterns are regular expressions searched in each linear's module path\n  \
(model.layers.3.mlp.down_proj, ...). A pattern that matches nothing, or two overrides\n  \
setting one key of one linear to different values, is refused before any work. The\n  \
output's recipe.toml reproduces the run; report.json gives each linear's method.\n\n\
AGENT PROTOCOL (--allocate agent --agent-cmd CMD):\n  \
Before each step shrink writes one JSON object on one line to CMD's stdin:\n  \
{\"shrink_agent\": 1, \"step\": 3, \"target_sparsity\": 0.5, \"sparsity\": 0.42, \"budget_left\": 0.08,\n   \
\"step_size\": 0.05, \"max_layer_sparsity\": 0.7, \"rollback_threshold\": 0.02,\n   \
\"dense_perplexity\": 14.9, \"checkpoint_perplexity\": 17.3,\n   \
\"layers\": [{\"layer\": 0, \"weights\": 3538944, \"sparsity\": 0.4, \"score_p10\": 0.0021,\n               \
\"score_p10_z\": -1.2, \"outlier_pct\": 3.1}, ...],\n   \
\"history\": [{\"step\": 1, \"proposer\": \"agent\", \"prune\": [{\"layer\": 4, \"amount\": 0.05}],\n                \
\"perplexity\": 17.1, \"checkpoint_perplexity\": 16.9, \"rise\": 0.012, \"accepted\": true, ...}]}\n  \
and reads one line back: {\"prune\": [{\"layer\": 4, \"amount\": 0.05}, ...], \"note\": \"why\"}\n  \
(amounts are added to the layers' sparsity; they are scaled down to land on the target).\n  \
When the run ends it writes {\"shrink_agent\": 1, \"done\": true} and closes stdin. An answer\n  \
that is not such JSON or names an impossible step (unknown layer, amount <= 0, above\n  \
max_layer_sparsity) is logged and the built-in policy takes that step; no answer within\n  \
--agent-timeout, an exit, or three failures in a row stop the program and the built-in\n  \
policy finishes. report.json's allocation.steps is the run log.\n\n\
LAYER PRUNING (--drop-layers N):\n  \
Removes N decoder layers, then compresses the remaining ones on the pruned model (any method,\n  \
in the same run); without --method the pruned model is written as it is. --layer-score:\n  \
angular   Gromov et al.: the block of N consecutive layers whose input and output hidden\n            \
states are closest in angle, (1/pi) arccos(cos(x_l, x_l+N)), averaged over all\n            \
calibration tokens (the default; one dense pass over the calibration data)\n  \
bi        ShortGPT's block influence 1 - E_t cos(x_l, x_l+1): the N layers of lowest BI\n  \
last      the N layers just before the final one (the papers' baseline; no calibration pass)\n  \
random    N layers drawn uniformly with --layer-seed (a baseline)\n  \
shrink compress --model MODEL --drop-layers 4 --calib data/calib.txt --nsamples 32 --out DIR\n  \
shrink compress --model MODEL --drop-layers 4 --method rtn --bits 8 --calib data/calib.txt \\\n      \
--out DIR\n  \
The output describes the pruned model (config.json, every tensor renamed: layers 0..L-N-1);\n  \
report.json gives the dropped layers, the score and every layer's score; recipe.toml holds\n  \
drop_layers = [..] (the original layer numbers), so --recipe DIR/recipe.toml drops the same\n  \
layers again without scoring. Layer numbers in a recipe's patterns (ignore, targets,\n  \
[[override]] match) are the ORIGINAL model's: a pattern that matches only dropped layers is\n  \
refused. report.json's per-layer entries use the pruned model's numbering.\n\n\
LAYER MERGING (--merge-layers N; LaCo, Yang et al. 2024, arXiv 2402.11187):\n  \
Removes exactly N decoder layers by collapsing consecutive layers into the first (RDSC: every\n  \
parameter theta*_l = theta_l + sum_k (theta_l+k - theta_l)), chosen by the paper's loop: from\n  \
base l = H - C down to L, merge the C layers l..l+C-1 (at most the layers still to remove)\n  \
and keep the merge when the cosine similarity of the last hidden states (after the final norm)\n  \
to the original's, on the first --merge-samples calibration windows, exceeds T; then l -= I,\n  \
else l -= 1. A sweep that ends short of N lowers T to the best similarity it rejected and\n  \
starts again from the top. Knobs (the reference code's Llama2-13B settings): --merge-size C\n  \
[7], --merge-lowest L [0], --merge-highest H [last layer], --merge-interval I [1],\n  \
--merge-threshold T [0.45], --merge-samples [5]. Combines with any --method like\n  \
--drop-layers (the remaining layers calibrated on the merged model), not with --drop-layers.\n  \
shrink compress --model MODEL --merge-layers 4 --calib data/calib.txt --nsamples 5 --out DIR\n  \
report.json's layer_merge gives every candidate measured and what each new layer is made of\n  \
(original layers and coefficients); recipe.toml holds merge_layers = [[..], ..] (each merge's\n  \
layers named by their first original layer), which --recipe replays without measuring. A\n  \
merged layer is named, in a recipe's patterns, by its first original layer.\n\n\
OUTPUT (DIR, written under a temporary name and renamed when complete):\n  \
config.json, model.safetensors (dequantized f32), tokenizer.json, tokenizer_config.json\n  \
quantized.safetensors   integer codes (U8), scales (F32), zero points (I32) and g_idx (I32) per linear\n  \
calibration_ids.safetensors   the calibration tokens (I64 [nsamples, seqlen])\n  \
report.json             settings, seed, per-layer relative output error and time, totals\n\n\
INTERRUPTED RUNS:\n  \
While it runs, compress keeps a checkpoint in .DIR.partial next to DIR: each finished\n  \
layer and the calibration activations after it. After a crash, a kill or a full disk,\n  \
run the same command with --resume: it continues at the first unfinished layer and\n  \
writes the same files an uninterrupted run would. The checkpoint is removed once DIR\n  \
is complete.")]
pub struct CompressJob {
    /// Model to compress: a Hugging Face directory or a .gguf file.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Output directory (must not exist unless --force).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace an existing output directory (only once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Continue an interrupted run of the same command from its last finished layer. Every run
    /// keeps a checkpoint in .NAME.partial next to the output (finished layers, the calibration
    /// activations after the last one); it is removed when the output is complete.
    #[arg(long)]
    pub resume: bool,
    /// A TOML recipe (see below); flags given on the command line override it.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Method: rtn, gptq, awq, magnitude, wanda, sparsegpt or obc (see METHODS below).
    #[arg(long)]
    pub method: Option<String>,
    /// AWQ before the method (Lin et al. 2024): per-channel input scales and per-group clipping
    /// searched for the method's grid on the unquantized layer, folded into the norms and the
    /// v_proj / up_proj rows before each group; then the method (rtn, gptq, ...) quantizes the
    /// rescaled weights. `--method awq` is `--awq --method rtn`. Recipe: `[awq]`.
    #[arg(long)]
    pub awq: bool,
    /// AWQ with llm-compressor's duo scaling, s = mean|x|^a / mean|w|^(1-a), instead of the
    /// paper's s = mean|x|^a.
    #[arg(long)]
    pub awq_duo_scaling: bool,
    /// AWQ without its clipping search (scales only).
    #[arg(long)]
    pub awq_no_clip: bool,
    /// SmoothQuant before the method (Xiao et al. 2023): per input channel of q/k/v and
    /// gate/up, s = max|X|^A / max|W|^(1-A) folded into the norm before them, moving
    /// activation outliers into the weights for W8A8 (evaluate with `shrink eval --act-quant
    /// int8`). A in (0, 1); 0.5 is the paper's default. Recipe: `smooth = A`.
    #[arg(long, value_name = "A")]
    pub smooth: Option<f64>,
    /// Fraction of each linear's weights to prune (0..1), for magnitude, wanda, sparsegpt, obc.
    #[arg(long, conflicts_with = "pattern")]
    pub sparsity: Option<f64>,
    /// Semi-structured pattern N:M: keep N of every M consecutive weights of a row (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// Magnitude pruning's comparison group: layer (one threshold per weight matrix, default)
    /// or row (per output row).
    #[arg(long, value_name = "layer|row")]
    pub scope: Option<String>,
    /// Bits per weight, 2..=8 (with a pruning method: quantize the kept weights too).
    #[arg(long)]
    pub bits: Option<u32>,
    /// Input columns per quantization group (e.g. 32, 64, 128; need not divide the input size:
    /// the last group of a row is then shorter). Omit for one group per output channel.
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Symmetric quantization (zero point fixed at the middle of the grid); default asymmetric.
    #[arg(long)]
    pub sym: bool,
    /// Search the clipping range per group to minimise the rounding error (GPTQ's MSE grid).
    #[arg(long)]
    pub mse: bool,
    /// Round onto a llama.cpp block type's own grid instead of integer groups (rtn, gptq):
    /// Q4_K, Q5_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4, the
    /// ternary TQ1_0 and TQ2_0, or the lattices IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M (GPTQ
    /// rounds 8 weights at a time onto their codebooks). Its scales are fitted as llama-quantize
    /// fits them (weighted by the Hessian diagonal, llama-imatrix's statistic up to a factor);
    /// GPTQ then chooses the codes and propagates their error, and `shrink export --format gguf`
    /// writes the blocks as they are. Rows the type's blocks do not divide get llama-quantize's
    /// fallback type (Q4_K on 576 columns: Q5_0). Sets --bits, --group-size and --sym.
    ///
    /// A llama-quantize file type (Q4_K_M, Q4_K_S, Q3_K_M, Q3_K_S, Q3_K_L, Q5_K_M, Q5_K_S, Q2_K_S,
    /// IQ3_M, IQ3_XS, IQ2_M)
    /// gives each linear the type llama-quantize's rules pick for it (attn_v and ffn_down get more
    /// bits in some layers); the recipe written beside the output lists them as overrides, and
    /// `shrink export --format gguf` writes the same mix.
    #[arg(long, value_name = "TYPE")]
    pub gguf_type: Option<String>,
    /// Take a plain --gguf-type (Q2_K, Q4_0, IQ4_XS, ...) as llama-quantize's file type of that
    /// name, with its per-tensor rules (export it with `--type TYPE --mix`).
    #[arg(long, requires = "gguf_type")]
    pub gguf_mix: bool,
    /// An llm-compressor preset scheme: W4A16, W8A16, W8A8, FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4,
    /// NVFP4A16, MXFP4, MXFP4A16. Sets the weight grid (bits, group size, symmetric, number
    /// format: FP8 E4M3 per channel or 128x128 block, NVFP4 = E2M1 with an E4M3 scale per 16
    /// and a global scale, MXFP4 = E2M1 with an E8M0 scale per 32) and records the scheme's
    /// activation quantization in the recipe (not applied yet).
    #[arg(long, value_name = "SCHEME")]
    pub scheme: Option<String>,
    /// GPTQ column order [default: static]: static (llm-compressor's default: natural groups
    /// fixed up front from the original weights, columns processed in descending Hessian-diagonal
    /// order), dynamic (the GPTQ paper's act-order: groups formed in that order, g_idx recorded)
    /// or none (natural order, groups fitted to the updated weights). On SmolLM2-135M W4 g64,
    /// static gave perplexity 17.10 where none gave 19.10 (RTN: 19.00). SparseGPT's default is
    /// none, except static for unstructured sparsity with --bits (50% + W4 g64: 32.90 static,
    /// 38.55 none); N:M patterns need none.
    #[arg(long, value_name = "none|dynamic|static", num_args = 0..=1, default_missing_value = "dynamic")]
    pub act_order: Option<String>,
    /// GPTQ: compute every group's scale and zero point up front from the original weights.
    #[arg(long)]
    pub static_groups: bool,
    /// GPTQ dampening as a fraction of the mean Hessian diagonal (raised automatically, with a
    /// warning, when the Hessian is not positive definite).
    #[arg(long)]
    pub damp: Option<f64>,
    /// GPTQ block size (columns updated together).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Calibration text: a UTF-8 file, a .jsonl file (see --calib-field) or a directory of .txt files.
    /// Methods that need no activations (rtn, magnitude) run data-free without it: each layer is
    /// compressed as it is read, no forward pass, no errors in the report. `generated:self`: the
    /// model samples its own calibration text from BOS, seeded by --seed (temperature 1).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Use these calibration token ids instead of drawing windows: a safetensors file with an
    /// I64/I32 tensor `input_ids` [nsamples, seqlen] (as written to calibration_ids.safetensors).
    #[arg(long, conflicts_with_all = ["calib", "nsamples", "seqlen", "seed"])]
    pub calib_ids: Option<PathBuf>,
    /// String field of each JSON line to use as a document.
    #[arg(long)]
    pub calib_field: Option<String>,
    /// Number of calibration samples [default: 128].
    #[arg(long)]
    pub nsamples: Option<usize>,
    /// Tokens per calibration sample [default: 512; the GPTQ paper uses 2048].
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Seed for drawing calibration windows [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// After compressing, evaluate the original and the compressed model on this text
    /// (perplexity, GPTQ protocol, seqlen 512) and their agreement (mean KL divergence of the
    /// compressed model's predictions from the original's, top-1 agreement, Δp, as `shrink eval
    /// --reference` gives them), and add them to the report's `eval`.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// --eval: use only the first N tokens of the text (whole windows of 512; a sweep's quick
    /// evaluation).
    #[arg(long, value_name = "N", requires = "eval")]
    pub eval_max_tokens: Option<usize>,
    /// After compressing, score the original and the compressed model on these multiple-choice
    /// tasks (as `shrink eval-tasks --tasks`: piqa,arc_easy,hellaswag:rc_5shot, ...; the requests
    /// of `scripts/fetch --tasks`) and add both models' accuracies to the report's `eval.tasks`.
    #[arg(long, value_delimiter = ',', value_name = "TASKS")]
    pub eval_tasks: Vec<String>,
    /// --eval-tasks: score only the first N documents of each task.
    #[arg(long, value_name = "N")]
    pub eval_tasks_limit: Option<usize>,
    /// --eval-tasks: a JSON-lines cache of the ORIGINAL model's per-request scores (as
    /// `shrink eval-tasks --cache`): runs that share the original score it once.
    #[arg(long, value_name = "FILE")]
    pub eval_tasks_cache: Option<PathBuf>,
    /// --eval-tasks: the oe_eval_tasks folder.
    #[arg(long, value_name = "DIR", default_value = shrink_eval::tasks::DEFAULT_DATA_DIR)]
    pub tasks_data: PathBuf,
    /// The model --eval and --eval-tasks compare with [default: --model]: give the original when
    /// --model is itself a processed copy (a dequantized or already pruned model), so that the
    /// report's KL divergence and accuracies are against the model users started from. It must
    /// share --model's vocabulary.
    #[arg(long, value_name = "MODEL")]
    pub reference: Option<PathBuf>,
    /// Which activations calibrate each group of linears: group ("true sequential": each group
    /// sees the outputs of the groups compressed before it in the same layer) or layer (every
    /// group sees the uncompressed layer, as in llm-compressor's sequential pipeline; one more
    /// forward pass per layer).
    #[arg(long, value_name = "group|layer", default_value = "group")]
    pub sequential: String,
    /// Mixture-of-Experts models: how each expert is calibrated. routed: from the tokens routed
    /// to it (an expert that got none is compressed data-free: RTN / magnitude); all: every
    /// expert runs on every token for its statistics (the routed outputs still drive the
    /// forward pass); fallback-rtn: routed, and an expert with fewer than --moe-min-tokens
    /// tokens is compressed data-free. The report gives every expert's token count and what was
    /// done. The router is never compressed.
    #[arg(
        long,
        value_name = "routed|all|fallback-rtn",
        default_value = "fallback-rtn"
    )]
    pub moe_calibration: String,
    /// Token threshold of --moe-calibration fallback-rtn [default: 2 x the expert's input size].
    #[arg(long, value_name = "N")]
    pub moe_min_tokens: Option<usize>,
    /// How a global budget is spread over the linears: uniform (every linear the same), owl
    /// (for --sparsity: OWL's outlier-weighted layerwise sparsity: one dense calibration pass
    /// measures each layer's share of outlier scores |W|*||X|| above --owl-m times their mean;
    /// layers with more outliers are pruned less, within +-lambda of the target, the total number
    /// of pruned weights kept at the target) or search (for --sparsity or --target-bpw: one
    /// profile pass solves every candidate of --search-sparsities / --search-bits on every
    /// linear and measures its relative output error; a marginal-return greedy then gives each
    /// linear its setting, the total at the budget). The allocation is written into the output's
    /// recipe.toml as overrides, and into the report. [default: search with --target-bpw, else
    /// uniform]
    ///
    /// agent: the loop of "LLMs can Compress LLMs: Adaptive Pruning by Agents": every layer
    /// starts at --agent-start; each step a proposer picks layers to prune further (the
    /// built-in policy: the --agent-layers layers whose 10th-percentile Wanda score, z-scored
    /// across layers, is lowest; or an external program, --agent-cmd); the step is measured
    /// by the perplexity of the first --holdin-samples calibration windows and rolled back
    /// when it rose more than --rollback-threshold; until the global --sparsity is reached.
    /// See AGENT PROTOCOL below.
    #[arg(long, value_name = "uniform|owl|search|agent")]
    pub allocate: Option<String>,
    /// --allocate agent: a program that proposes each step (run once with `sh -c`; one JSON
    /// request per line on its stdin, one JSON answer per line on its stdout). Without it the
    /// built-in policy proposes.
    #[arg(long, value_name = "CMD")]
    pub agent_cmd: Option<String>,
    /// --allocate agent: seconds to wait for each answer of --agent-cmd; after that the
    /// program is stopped and the built-in policy finishes the run.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub agent_timeout: f64,
    /// --allocate agent: the sparsity every layer starts at [default: --sparsity minus 0.1].
    #[arg(long, value_name = "FRACTION")]
    pub agent_start: Option<f64>,
    /// --allocate agent: the sparsity a layer gains in one built-in step.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    pub agent_step: f64,
    /// --allocate agent: layers moved per built-in step [default: a sixth of the layers].
    #[arg(long, value_name = "N")]
    pub agent_layers: Option<usize>,
    /// --allocate agent: no layer goes above this sparsity [default: --sparsity + 0.2, at most 0.95].
    #[arg(long, value_name = "FRACTION")]
    pub agent_max_sparsity: Option<f64>,
    /// --allocate agent: stop with an error after this many steps.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub agent_max_steps: usize,
    /// --allocate agent: a step is rolled back when the held-in perplexity rose by more than
    /// this fraction over the last accepted step (0.02 = 2%).
    #[arg(long, default_value_t = 0.02, value_name = "FRACTION")]
    pub rollback_threshold: f64,
    /// Calibration windows the held-in perplexity is measured on (the first N of the
    /// calibration set; never the --eval text): by --allocate agent and --max-ppl-rise.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub holdin_samples: usize,
    /// Perplexity guard: refuse to write the output when the compressed model's held-in
    /// perplexity is more than this fraction above the original's (0.5 = 50% higher). The
    /// compressed layers are kept: rerun with a looser guard and --resume.
    #[arg(long, value_name = "FRACTION")]
    pub max_ppl_rise: Option<f64>,
    /// Mixed precision: the bits per weight of the compressed linears, as the compressed-tensors
    /// export stores them (codes, scales counted at 16 bits as --scale-dtype f16 writes them,
    /// zero points when asymmetric, g_idx with
    /// --act-order dynamic; e.g. W4 g64 asym = 4.3125, W3 g32 = 3.59375). Each linear gets a
    /// bit width of --search-bits with the run's other settings (--method gptq or rtn,
    /// --group-size, ...), chosen by --allocate search.
    #[arg(long, value_name = "BPW", conflicts_with_all = ["bits", "sparsity", "pattern"])]
    pub target_bpw: Option<f64>,
    /// Mixed precision for a file size: the size of the model.safetensors that `shrink export
    /// --format compressed-tensors --scale-dtype f16` would write (120MB, 1.5GiB, bytes): the
    /// compressed linears get what the other tensors (F32 in that export) and the header
    /// (estimated, a few KB) leave, as bits per weight for --target-bpw.
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["bits", "sparsity", "pattern", "target_bpw"])]
    pub target_size: Option<String>,
    /// Candidate bit widths of --target-bpw.
    #[arg(long, value_name = "LIST", default_value = "2,3,4,8")]
    pub search_bits: String,
    /// Mixed llama.cpp types instead of bit widths: each linear gets one of these types (e.g.
    /// Q4_0,Q5_0,Q8_0,Q3_K,Q4_K,Q6_K; a type whose blocks do not fit a row falls back as
    /// llama-quantize's does), GPTQ/RTN rounding onto its grid. --target-size then counts the
    /// GGUF file `shrink export --format gguf` writes (needs a GGUF model), --target-bpw the
    /// linears' blocks. Replaces --search-bits.
    #[arg(long, value_name = "LIST", conflicts_with = "gguf_type")]
    pub search_types: Option<String>,
    /// Candidate group sizes of --target-bpw / --target-size, combined with every bit width of
    /// --search-bits (each linear then gets a bit width and a group size) [default: the run's
    /// --group-size only].
    #[arg(long, value_name = "LIST")]
    pub search_group_sizes: Option<String>,
    /// Candidate sparsities of --allocate search with --sparsity (the target must lie between
    /// the smallest and the largest; the last step is taken part way to hit it exactly).
    #[arg(long, value_name = "LIST", default_value = "0.3,0.4,0.5,0.6,0.7,0.8")]
    pub search_sparsities: String,
    /// OWL's outlier threshold M (a score is an outlier above M times its layer's mean).
    #[arg(long, default_value_t = 5.0)]
    pub owl_m: f64,
    /// OWL's lambda: layer sparsities lie within +-lambda of the target.
    #[arg(long, default_value_t = 0.08)]
    pub owl_lambda: f64,
    /// Rotate the model before compressing (QuaRot / SpinQuant R1 on the residual stream after
    /// absorbing the norm weights, R2 per head between v and o; seed 0): hadamard (randomized
    /// Hadamard; the hidden size and head_dim need a construction) or random-orthogonal (any
    /// size). The written model is an ordinary one with an untied head and the same logits
    /// before compression; recipe.toml records it as `rotate = "..."`.
    #[arg(long, value_name = "hadamard|random-orthogonal")]
    pub rotate: Option<String>,
    /// Layer pruning: remove N decoder layers (chosen by --layer-score) before compressing; the
    /// remaining layers are renumbered and calibrated on the pruned model (see LAYER PRUNING).
    #[arg(long, value_name = "N")]
    pub drop_layers: Option<usize>,
    /// How --drop-layers chooses: angular (default), bi, last or random.
    #[arg(long, value_name = "angular|bi|last|random")]
    pub layer_score: Option<String>,
    /// Seed of --layer-score random [default: 0].
    #[arg(long, value_name = "SEED")]
    pub layer_seed: Option<u64>,
    /// Layer merging (LaCo): remove exactly N decoder layers by collapsing consecutive layers
    /// into one (RDSC), chosen by the similarity loop (see LAYER MERGING).
    #[arg(long, value_name = "N")]
    pub merge_layers: Option<usize>,
    /// LaCo's C: layers per merge, the base included [default: 7].
    #[arg(long, value_name = "C")]
    pub merge_size: Option<usize>,
    /// LaCo's L: the lowest base layer [default: 0].
    #[arg(long, value_name = "L")]
    pub merge_lowest: Option<usize>,
    /// LaCo's H: the highest layer; the first base is H - C [default: the last layer].
    #[arg(long, value_name = "H")]
    pub merge_highest: Option<usize>,
    /// LaCo's I: how far the base moves down after a kept merge [default: 1].
    #[arg(long, value_name = "I")]
    pub merge_interval: Option<usize>,
    /// LaCo's T: a merge is kept when the similarity of the last hidden states exceeds it
    /// [default: 0.45].
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub merge_threshold: Option<f64>,
    /// Calibration windows (the first ones) the merge similarity is measured on [default: 5].
    #[arg(long, value_name = "K")]
    pub merge_samples: Option<usize>,
    /// Compress only the first N layers (for measurements; the rest are copied unchanged).
    #[arg(long, hide = true)]
    pub layers: Option<usize>,
}

impl CompressJob {
    /// A job from `shrink compress`'s flags (without the program and subcommand names), with
    /// every default the command line has: `from_args(["--model", "M", "--out", "D", "--method",
    /// "rtn", "--bits", "8"])`. An unknown flag or a bad value is an error with clap's message.
    pub fn from_args<I, S>(args: I) -> Result<CompressJob>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        #[command(name = "compress", no_binary_name = true)]
        struct Flags {
            #[command(flatten)]
            job: CompressJob,
        }
        use clap::Parser;
        Flags::try_parse_from(args)
            .map(|f| f.job)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The recipe with the command line's flags applied over it.
fn merged(a: &CompressJob) -> Result<Recipe> {
    let mut r = match &a.recipe {
        Some(p) => Recipe::load(p)?,
        None => Recipe::default(),
    };
    if r.stage.is_empty() {
        r.stage.push(Stage::default());
    }
    let c = &mut r.calibration;
    c.file = a.calib.clone().or(c.file.take());
    c.field = a.calib_field.clone().or(c.field.take());
    c.nsamples = a.nsamples.or(c.nsamples).or(Some(DEFAULT_NSAMPLES));
    c.seqlen = a.seqlen.or(c.seqlen).or(Some(DEFAULT_SEQLEN));
    c.seed = a.seed.or(c.seed).or(Some(DEFAULT_SEED));
    let flags = a.method.is_some()
        || a.bits.is_some()
        || a.gguf_type.is_some()
        || a.scheme.is_some()
        || a.group_size.is_some()
        || a.sparsity.is_some()
        || a.pattern.is_some()
        || a.scope.is_some()
        || a.sym
        || a.mse
        || a.act_order.is_some()
        || a.static_groups
        || a.damp.is_some()
        || a.block_size.is_some();
    if r.stage.len() > 1 && flags {
        bail!(
            "the recipe has {} stages; method flags (--method, --bits, --sparsity, ...) only \
             override a one-stage recipe: edit the recipe instead",
            r.stage.len()
        );
    }
    let s = &mut r.stage[0];
    s.method = a.method.clone().or(s.method.take());
    s.sparsity = a.sparsity.or(s.sparsity);
    s.pattern = a.pattern.clone().or(s.pattern.take());
    s.scope = a.scope.clone().or(s.scope.take());
    s.bits = a.bits.or(s.bits);
    s.group_size = a.group_size.or(s.group_size);
    s.sym = Some(a.sym || s.sym.unwrap_or(false));
    s.mse = Some(a.mse || s.mse.unwrap_or(false));
    s.act_order = a.act_order.clone().or(s.act_order.take());
    s.static_groups = Some(a.static_groups || s.static_groups.unwrap_or(false));
    s.damp = a.damp.or(s.damp);
    s.block_size = a.block_size.or(s.block_size);
    if a.gguf_type.is_some() {
        // the type decides these (a recipe's were filled from its own type)
        s.bits = a.bits;
        s.group_size = a.group_size;
    }
    s.gguf_type = a.gguf_type.clone().or(s.gguf_type.take());
    s.scheme = a.scheme.clone().or(s.scheme.take());
    if a.awq || a.awq_duo_scaling || a.awq_no_clip {
        let w = r.awq.get_or_insert_with(Default::default);
        if a.awq_duo_scaling {
            w.duo_scaling = Some(true);
        }
        if a.awq_no_clip {
            w.clip = Some(false);
        }
    }
    r.smooth = a.smooth.or(r.smooth);
    r.prepare_transforms()?;
    r.fill_grids()?;
    Ok(r)
}

/// `--drop-layers N --layer-score S --layer-seed K`, checked before the model is opened.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
struct DropRequest {
    n: usize,
    score: LayerScore,
    seed: Option<u64>,
}

fn drop_request(a: &CompressJob) -> Result<Option<DropRequest>> {
    let score = a
        .layer_score
        .as_deref()
        .map(LayerScore::parse)
        .transpose()?;
    match a.drop_layers {
        None | Some(0) if score.is_some() || a.layer_seed.is_some() => bail!(
            "--layer-score and --layer-seed choose the layers --drop-layers N removes: give \
             --drop-layers N with N >= 1"
        ),
        Some(0) => bail!("--drop-layers 0 drops nothing: give N >= 1, or leave the flag out"),
        None => Ok(None),
        Some(n) => {
            let score = score.unwrap_or(LayerScore::Angular);
            if a.layer_seed.is_some() && score != LayerScore::Random {
                bail!(
                    "--layer-seed seeds --layer-score random; this run scores layers by {}",
                    score.name()
                );
            }
            Ok(Some(DropRequest {
                n,
                score,
                seed: (score == LayerScore::Random).then(|| a.layer_seed.unwrap_or(0)),
            }))
        }
    }
}

/// `--merge-layers N` and LaCo's knobs, checked (against the flags) before the model is opened.
fn merge_request(a: &CompressJob) -> Result<Option<crate::merge::MergeSettings>> {
    let knobs = [
        ("--merge-size", a.merge_size.is_some()),
        ("--merge-lowest", a.merge_lowest.is_some()),
        ("--merge-highest", a.merge_highest.is_some()),
        ("--merge-interval", a.merge_interval.is_some()),
        ("--merge-threshold", a.merge_threshold.is_some()),
        ("--merge-samples", a.merge_samples.is_some()),
    ];
    match a.merge_layers {
        None => {
            if let Some((k, _)) = knobs.iter().find(|(_, set)| *set) {
                bail!("{k} is a setting of layer merging: give --merge-layers N with N >= 1");
            }
            Ok(None)
        }
        Some(0) => bail!("--merge-layers 0 removes nothing: give N >= 1, or leave the flag out"),
        Some(n) => {
            if a.drop_layers.is_some() {
                bail!(
                    "--merge-layers and --drop-layers are two ways of removing layers: give one \
                     (to do both, run compress twice)"
                );
            }
            Ok(Some(crate::merge::MergeSettings {
                n,
                size: a.merge_size.unwrap_or(7),
                lowest: a.merge_lowest.unwrap_or(0),
                highest: a.merge_highest,
                interval: a.merge_interval.unwrap_or(1),
                threshold: a.merge_threshold.unwrap_or(0.45),
                samples: a.merge_samples.unwrap_or(5),
            }))
        }
    }
}

/// A recipe that asks for no method: with layers to drop, the pruned model is written as it is.
/// Refuses the method settings that would then do nothing.
fn check_drop_only(r: &Recipe, a: &CompressJob, what: &str) -> Result<()> {
    let s = &r.stage[0];
    let stray = [
        ("bits", s.bits.is_some()),
        ("gguf_type", s.gguf_type.is_some()),
        ("sparsity", s.sparsity.is_some()),
        ("pattern", s.pattern.is_some()),
        ("group_size", s.group_size.is_some()),
        ("act_order", s.act_order.is_some()),
        ("damp", s.damp.is_some()),
        ("block_size", s.block_size.is_some()),
        ("scope", s.scope.is_some()),
        ("targets", !s.targets.is_empty()),
        ("stage ignore", !s.ignore.is_empty()),
        ("ignore", !r.ignore.is_empty()),
        ("[[override]]", !r.overrides.is_empty()),
        (
            "--allocate",
            a.allocate.as_deref().is_some_and(|x| x != "uniform"),
        ),
        (
            "--target-bpw",
            a.target_bpw.is_some() || a.target_size.is_some(),
        ),
        ("sym", s.sym == Some(true)),
        ("mse", s.mse == Some(true)),
        ("static_groups", s.static_groups == Some(true)),
    ];
    if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
        bail!(
            "{k} is a setting of a compression method, but no method is given: add --method \
             (rtn|gptq|magnitude|wanda|sparsegpt|obc), or leave {k} out to only {what} layers"
        );
    }
    Ok(())
}

/// Calibration tokens for a fresh run, as the recipe asks.
fn load_calib(
    a: &CompressJob,
    c: &crate::CalibSection,
    src: &ModelSource,
    data_free: bool,
    ui: &dyn Ui,
) -> Result<CalibSet> {
    match &a.calib_ids {
        Some(p) => CalibSet::load(p, src.config.vocab_size),
        None if data_free && c.file.is_none() => Ok(CalibSet::empty()),
        None => {
            let calib_path = c.file.clone().context(
                "no calibration text given (use --calib FILE or [calibration] file in a recipe)",
            )?;
            let (n, l, seed) = (c.nsamples.unwrap(), c.seqlen.unwrap(), c.seed.unwrap());
            if crate::calib_source::is_generated(&calib_path) {
                return crate::calib_source::generated_set(&calib_path, src, n, l, seed, ui);
            }
            let source = TextSource::from_path(&calib_path, c.field.as_deref())?;
            CalibSet::sample(&source, &src.tokenizer, n, l, seed)
        }
    }
}

/// The layers merged (LaCo): the accepted merges (by first original layer), what each layer of
/// the merged model is made of, and the search behind it (for report.json).
struct Merged {
    merges: Vec<Vec<usize>>,
    comp: crate::merge::Composition,
    info: serde_json::Value,
}

/// The layers dropped, why, and the scores behind the choice (for report.json).
struct Dropped {
    layers: Vec<usize>,
    kept: Vec<usize>,
    info: serde_json::Value,
}

/// Which layers are removed: `--drop-layers` scored (or, resuming, the interrupted run's list),
/// `--merge-layers` searched by LaCo's loop, or a recipe's list replayed. `calib` is the fresh
/// run's calibration set (None when resuming).
#[allow(clippy::too_many_arguments)]
fn removed_layers(
    a: &CompressJob,
    src: &ModelSource,
    recipe: &Recipe,
    drop_req: Option<DropRequest>,
    merge_req: Option<crate::merge::MergeSettings>,
    calib: Option<&CalibSet>,
    merge_label: &str,
    ui: &dyn Ui,
) -> Result<(Option<Dropped>, Option<Merged>)> {
    let total_layers = src.config.num_layers;
    // Which layers go.
    let mut dropped: Option<Dropped> = None;
    if let Some(req) = drop_req {
        let t = std::time::Instant::now();
        let (layers, scores) = if a.resume {
            // The interrupted run chose them; the same request must find the same list.
            let saved = Checkpoint::saved_settings(&a.out)?;
            if saved["layer_drop"] != serde_json::to_value(req)? {
                bail!(
                    "{}: the interrupted run used different layer-pruning settings ({} then); \
                     resume with the same command, or delete the checkpoint to start over",
                    Checkpoint::path_for(&a.out).display(),
                    saved["layer_drop"]
                );
            }
            let list: Vec<usize> =
                serde_json::from_value(saved["recipe"]["recipe"]["drop_layers"].clone())
                    .context("the checkpoint's settings.json lists no dropped layers")?;
            (list, None)
        } else {
            let scores = if req.score.needs_data() {
                let calib = calib.expect("loaded above");
                let bar = ui.bar(total_layers as u64, "layer scores: measuring layers");
                let s = crate::layers::measure(src, calib, req.n, &mut |d, _| {
                    bar.set_position(d as u64)
                })?;
                bar.finish_and_clear();
                Some(s)
            } else {
                None
            };
            let list = crate::layers::choose(
                req.score,
                req.n,
                total_layers,
                scores.as_ref(),
                req.seed.unwrap_or(0),
            )?;
            (list, scores)
        };
        ui.info(&format!(
            "layer pruning ({}): dropping {} of {total_layers} layers: {layers:?} ({:.1} s)",
            req.score.name(),
            req.n,
            t.elapsed().as_secs_f64()
        ));
        dropped = Some(Dropped {
            kept: crate::layers::kept(total_layers, &layers),
            info: json!({
                "score": req.score,
                "n": req.n,
                "seed": req.seed,
                "tokens": req.score.needs_data().then_some("angular / bi averaged over every calibration token"),
                "seconds": t.elapsed().as_secs_f64(),
                "scores": scores,
            }),
            layers,
        });
    } else if !recipe.drop_layers.is_empty() {
        let layers = recipe.drop_layers.clone();
        dropped = Some(Dropped {
            kept: crate::layers::kept(total_layers, &layers),
            info: json!({"score": "recipe", "n": layers.len(), "recipe": a.recipe}),
            layers,
        });
    }
    // Which layers merge (LaCo): the similarity loop, or a recipe's list replayed.
    let mut merged: Option<Merged> = None;
    if let Some(req) = merge_req {
        let t = std::time::Instant::now();
        let (merges, comp, result) = if a.resume {
            // The interrupted run chose them; the same request must find the same list.
            let saved = Checkpoint::saved_settings(&a.out)?;
            if saved["layer_merge"] != serde_json::to_value(req)? {
                bail!(
                    "{}: the interrupted run used different layer-merging settings ({} then); \
                     resume with the same command, or delete the checkpoint to start over",
                    Checkpoint::path_for(&a.out).display(),
                    saved["layer_merge"]
                );
            }
            let list: Vec<Vec<usize>> =
                serde_json::from_value(saved["recipe"]["recipe"]["merge_layers"].clone())
                    .context("the checkpoint's settings.json lists no merged layers")?;
            let comp = crate::merge::replay(&list, total_layers, "the checkpoint")?;
            (list, comp, None)
        } else {
            let calib = calib.expect("loaded above");
            let r = crate::merge::search(src, calib, &req, &mut |st| {
                ui.info(&format!(
                    "layer merging: sweep {} base {} layers {:?}: similarity {:.4} {} T {:.4}{}",
                    st.pass,
                    st.base,
                    st.layers,
                    st.similarity,
                    if st.accepted { ">" } else { "<=" },
                    st.threshold,
                    if st.accepted { ": merged" } else { "" }
                ));
            })?;
            (r.merges.clone(), r.composition.clone(), Some(r))
        };
        ui.info(&format!(
            "layer merging (LaCo): {} of {total_layers} layers merged away: {merges:?} ({:.1} s)",
            req.n,
            t.elapsed().as_secs_f64()
        ));
        merged = Some(Merged {
            info: json!({
                "method": "laco",
                "n": req.n,
                "settings": req,
                "search": result,
                "seconds": t.elapsed().as_secs_f64(),
            }),
            merges,
            comp,
        });
    } else if !recipe.merge_layers.is_empty() {
        let merges = recipe.merge_layers.clone();
        let comp = crate::merge::replay(&merges, total_layers, merge_label)?;
        merged = Some(Merged {
            info: json!({"method": "recipe", "n": total_layers - comp.len(), "recipe": a.recipe}),
            merges,
            comp,
        });
    }
    Ok((dropped, merged))
}

/// The per-layer allocation of `--allocate owl` (OWL's rule after one dense measuring pass) or
/// `--allocate agent` (the agents paper's loop), written into `recipe` as one sparsity override
/// per layer; its record for report.json. Layer numbers in `recipe` are the original model's
/// (`keep` maps the pruned model's layers to them).
#[allow(clippy::too_many_arguments)]
fn allocate_layers(
    a: &CompressJob,
    src: &ModelSource,
    calib: &CalibSet,
    n_layers: usize,
    keep: &[usize],
    owl: Option<&(usize, f64, crate::alloc::OwlProbe)>,
    agent: Option<&(usize, crate::agent::AgentSettings)>,
    recipe: &mut Recipe,
    ui: &dyn Ui,
) -> Result<Option<serde_json::Value>> {
    if let Some((stage, target, probe)) = &owl {
        let t = std::time::Instant::now();
        let bar = ui.bar(n_layers as u64, "OWL: measuring layers");
        shrink_pipeline::run(
            src,
            calib,
            probe as &dyn shrink_methods::Method,
            0..n_layers,
            &mut shrink_pipeline::Discard,
            &mut |d, _| bar.set_position(d as u64),
        )?;
        bar.finish_and_clear();
        let layers = probe.layers();
        let s = crate::alloc::owl_sparsities(&layers, *target, a.owl_lambda)?;
        let per: Vec<(usize, f64)> = layers
            .iter()
            .map(|l| keep[l.layer]) // the recipe's patterns use the original layer numbers
            .zip(s.iter().copied())
            .collect();
        *recipe = crate::alloc::with_layer_sparsities(recipe, *stage, &per);
        let (lo, hi) = s
            .iter()
            .fold((1f64, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
        ui.info(&format!(
            "OWL (M = {}, lambda = {}): layer sparsities {lo:.4}..{hi:.4} for a global {target} ({:.1} s)",
            a.owl_m,
            a.owl_lambda,
            t.elapsed().as_secs_f64()
        ));
        return Ok(Some(json!({
            "strategy": "owl",
            "m": a.owl_m,
            "lambda": a.owl_lambda,
            "target": target,
            "seconds": t.elapsed().as_secs_f64(),
            "layers": layers.iter().zip(&s).map(|(l, s)| json!({
                "layer": l.layer, "original_layer": keep[l.layer], "weights": l.weights, "outlier_pct": l.outlier_pct, "sparsity": s,
            })).collect::<Vec<_>>(),
        })));
    }
    // The agents paper's loop: a dense pass, then proposals measured on the held-in slice,
    // each kept or rolled back; the allocation becomes one sparsity override per layer.
    if let Some((stage, settings)) = &agent {
        let ext = match &a.agent_cmd {
            Some(c) => Some(crate::agent::External::spawn(
                c,
                std::time::Duration::from_secs_f64(a.agent_timeout),
            )?),
            None => None,
        };
        let bar = ui.bar(n_layers as u64, "agent: measuring layers");
        let mut log = |st: &crate::agent::Step| {
            let moves: Vec<String> = st
                .prune
                .iter()
                .map(|p| format!("{} +{:.3}", p.layer, p.amount))
                .collect();
            ui.info(&format!(
                "agent step {} ({}): layers {} -> sparsity {:.4}; held-in perplexity {:.3} ({:+.2}%): {}",
                st.step,
                st.proposer,
                moves.join(", "),
                st.sparsity_after,
                st.perplexity,
                100.0 * st.rise,
                if st.accepted { "kept" } else { "ROLLED BACK" }
            ));
        };
        let out = crate::agent::allocate(
            src,
            calib,
            0..n_layers,
            a.owl_m,
            a.holdin_samples,
            settings,
            ext,
            &mut |d, n| {
                bar.set_position(d as u64);
                if d == n {
                    bar.finish_and_clear();
                }
            },
            &mut log,
        )?;
        bar.finish_and_clear();
        // the recipe's patterns use the original layer numbers
        let per: Vec<(usize, f64)> = out.sparsities.iter().map(|&(l, s)| (keep[l], s)).collect();
        *recipe = crate::alloc::with_layer_sparsities(recipe, *stage, &per);
        ui.info(&format!(
                "agent: {} steps ({} rolled back) in {:.1} s; sparsity {:.4}; held-in perplexity dense {:.3}, start {:.3}, final {:.3}",
                out.steps.len(),
                out.rollbacks,
                out.seconds,
                out.sparsity,
                out.dense_perplexity,
                out.start_perplexity,
                out.final_perplexity
            ));
        let mut v = serde_json::to_value(&out)?;
        v["strategy"] = json!("agent");
        v["settings"] = serde_json::to_value(settings)?;
        v["agent_cmd"] = json!(a.agent_cmd);
        v["original_layers"] = json!(out
            .sparsities
            .iter()
            .map(|&(l, _)| keep[l])
            .collect::<Vec<_>>());
        v["note"] = json!("candidate models are pruned with Wanda masks from the dense model's input norms; the run's method then prunes with the allocation; layer numbers are the (pruned) model's, original_layers maps them");
        return Ok(Some(v));
    }
    Ok(None)
}

/// Runs the job. Nothing is written to the output until it is complete (see the module doc).
pub fn run(a: &CompressJob, ui: &dyn Ui) -> Result<Outcome> {
    let mut recipe = merged(a)?;
    let drop_req = drop_request(a)?;
    let merge_req = merge_request(a)?;
    OutputDir::refuse_existing(&a.out, a.force)?;
    if a.resume {
        // Before the model is opened: a missing checkpoint is the first thing to report.
        Checkpoint::require(&a.out)?;
    }
    let src = ModelSource::open(&a.model)?;
    // A rotation (the flag over a recipe's), before anything looks at the weights.
    recipe.rotate = a.rotate.clone().or(recipe.rotate.take());
    let rotation = match &recipe.rotate {
        Some(k) => Some(shrink_model::rotation::Rotation::new(
            shrink_model::rotation::RotationKind::parse(k).context("--rotate")?,
        )),
        None => None,
    };
    let src = match &rotation {
        Some(r) => src
            .rotated(r)
            .with_context(|| format!("--rotate, for {}", a.model.display()))?,
        None => src,
    };
    let rotation_json =
        rotation.map(|r| json!({"kind": r.kind.name(), "seed": r.seed, "r1": true, "r2": r.r2}));
    // a llama-quantize mix: each linear's type by llama.cpp's rules, as overrides
    let calibrated = recipe
        .stage
        .iter()
        .any(|s| s.method.as_deref() != Some("rtn"));
    crate::mix::expand_mixes(&mut recipe, &src.config, calibrated, a.gguf_mix)
        .with_context(|| format!("for {}", a.model.display()))?;
    let total_layers = src.config.num_layers;
    let recipe_label = match &a.recipe {
        Some(p) => format!("{}: drop_layers", p.display()),
        None => "drop_layers".into(),
    };
    // Layer pruning, checked before any work: the count against the model, a recipe's list.
    if let Some(r) = &drop_req {
        crate::layers::check_count(r.n, total_layers, &format!("--drop-layers {}", r.n))
            .with_context(|| a.model.display().to_string())?;
        recipe.drop_layers.clear(); // the flags replace a recipe's list
    } else if !recipe.drop_layers.is_empty() {
        recipe.drop_layers =
            crate::layers::check_list(&recipe.drop_layers, total_layers, &recipe_label)
                .with_context(|| format!("for {}", a.model.display()))?;
    }
    let merge_label = match &a.recipe {
        Some(p) => format!("{}: merge_layers", p.display()),
        None => "merge_layers".into(),
    };
    if let Some(m) = &merge_req {
        if !recipe.drop_layers.is_empty() {
            bail!(
                "{recipe_label}: the recipe drops layers and --merge-layers merges them: give one \
                 way of removing layers"
            );
        }
        m.check(total_layers)
            .with_context(|| a.model.display().to_string())?;
        recipe.merge_layers.clear(); // the flags replace a recipe's list
    } else if !recipe.merge_layers.is_empty() {
        if !recipe.drop_layers.is_empty() || drop_req.is_some() {
            bail!(
                "{merge_label}: the recipe merges layers and also drops some (drop_layers or \
                 --drop-layers): give one way of removing layers"
            );
        }
        // checked now (the count and every merge's layers); replayed below
        let comp = crate::merge::replay(&recipe.merge_layers, total_layers, &merge_label)
            .with_context(|| format!("for {}", a.model.display()))?;
        crate::merge::check_structure(&src.config, &comp)
            .with_context(|| format!("{merge_label}, for {}", a.model.display()))?;
    }
    let merging = merge_req.is_some() || !recipe.merge_layers.is_empty();
    let dropping = drop_req.is_some() || !recipe.drop_layers.is_empty();
    let removing = dropping || merging;
    let drop_only = removing && recipe.stage.len() == 1 && recipe.stage[0].method.is_none();
    if drop_only {
        check_drop_only(&recipe, a, if merging { "merge" } else { "drop" })?;
        if a.resume {
            bail!(
                "--resume: a run that only {} layers keeps no checkpoint; run it again without \
                 --resume",
                if merging { "merges" } else { "drops" }
            );
        }
    }
    let n_layers_orig = a.layers.unwrap_or(total_layers).min(total_layers);
    // Every linear's settings, checked before any work (on the original layers; checked again
    // on the kept ones once they are known).
    let plan_context = || match &a.recipe {
        Some(p) => format!(
            "{}: the recipe does not fit {}",
            p.display(),
            a.model.display()
        ),
        None => "invalid settings".into(),
    };
    let shapes = crate::compressible_shapes(&src.config, 0..n_layers_orig);
    let target_size = match &a.target_size {
        Some(t) => Some(crate::budget::parse_size(t)?),
        None => None,
    };
    let allocate = a.allocate.clone().unwrap_or_else(|| {
        if a.target_bpw.is_some() || target_size.is_some() {
            "search".into()
        } else {
            "uniform".into()
        }
    });
    if (a.target_bpw.is_some() || target_size.is_some()) && allocate != "search" {
        bail!(
            "--target-bpw and --target-size are allocated by --allocate search, not '{allocate}'"
        );
    }
    if allocate == "search" && merging {
        bail!(
            "--allocate search (--target-bpw, --target-size) does not combine with layer merging \
             yet: merge the layers first (shrink compress --merge-layers ... --out DIR), then \
             search on DIR"
        );
    }
    if allocate == "search" && dropping {
        bail!(
            "--allocate search (--target-bpw, --target-size) does not combine with layer pruning \
             yet: drop the layers first (shrink compress --drop-layers ... --out DIR), then \
             search on DIR"
        );
    }
    let mut search = None;
    let owl = match allocate.as_str() {
        "uniform" => None,
        "owl" => {
            let (stage, target) = crate::alloc::pruning_stage(&recipe)?;
            // Checked now, before any work; the rule is applied after the measuring pass.
            crate::alloc::owl_sparsities(
                &[crate::alloc::LayerOutliers {
                    layer: 0,
                    weights: 1,
                    outlier_pct: 0.0,
                    score_p10: 0.0,
                }],
                target,
                a.owl_lambda,
            )?;
            Some((stage, target, crate::alloc::OwlProbe::new(a.owl_m)?))
        }
        "search" => {
            let (budget, list) = match (a.target_bpw, target_size) {
                (Some(b), _) => (
                    target::Budget::Bpw(b),
                    self::list::<f64>(&a.search_bits, "--search-bits")?,
                ),
                (None, Some(bytes)) => (
                    target::Budget::Size(bytes),
                    self::list::<f64>(&a.search_bits, "--search-bits")?,
                ),
                (None, None) => {
                    let (_, p) = crate::alloc::pruning_stage(&recipe).context(
                        "--allocate search needs a budget: --target-bpw BPW, or --sparsity FRACTION with a pruning method",
                    )?;
                    (
                        target::Budget::Sparsity(p),
                        self::list::<f64>(&a.search_sparsities, "--search-sparsities")?,
                    )
                }
            };
            let types = match &a.search_types {
                Some(t) => self::list::<String>(t, "--search-types")?
                    .iter()
                    .map(|n| {
                        if shrink_model::ggml_mix::Mix::parse(n, false).is_some() {
                            bail!("--search-types: '{n}' is a llama-quantize mix, not a tensor type (give types such as Q4_K, Q5_0, Q8_0)");
                        }
                        crate::recipe::parse_grid_type(n)
                            .with_context(|| format!("--search-types '{n}'"))
                    })
                    .collect::<Result<Vec<_>>>()?,
                None => vec![],
            };
            if !types.is_empty() && a.target_bpw.is_none() && target_size.is_none() {
                bail!("--search-types needs a budget: --target-size SIZE (the GGUF file) or --target-bpw BPW");
            }
            let (r, s) = target::prepare(
                &recipe,
                budget,
                &list,
                &shapes,
                &src,
                &match &a.search_group_sizes {
                    Some(g) => self::list::<usize>(g, "--search-group-sizes")?,
                    None => vec![],
                },
                &types,
            )
            .with_context(plan_context)?;
            recipe = r;
            search = Some(s);
            None
        }
        "agent" => None,
        o => bail!("unknown --allocate '{o}' (use uniform, owl, search or agent)"),
    };
    let mut agent = if allocate == "agent" {
        let (stage, target) = crate::alloc::pruning_stage(&recipe)?;
        let settings = crate::agent::AgentSettings {
            target,
            start: a.agent_start.unwrap_or((target - 0.1).max(0.0)),
            step: a.agent_step,
            layers_per_step: a.agent_layers.unwrap_or(n_layers_orig.div_ceil(6).max(1)),
            rollback_threshold: a.rollback_threshold,
            max_layer_sparsity: a.agent_max_sparsity.unwrap_or((target + 0.2).min(0.95)),
            max_steps: a.agent_max_steps,
            cooldown: 2,
        };
        settings.check()?;
        if !(a.agent_timeout.is_finite() && a.agent_timeout > 0.0) {
            bail!(
                "--agent-timeout must be a positive number of seconds, got {}",
                a.agent_timeout
            );
        }
        Some((stage, settings))
    } else {
        if a.agent_cmd.is_some() {
            bail!("--agent-cmd needs --allocate agent");
        }
        None
    };
    if a.holdin_samples == 0 {
        bail!("--holdin-samples must be at least 1");
    }
    if let Some(r) = a.max_ppl_rise {
        if !(r.is_finite() && r >= 0.0) {
            bail!("--max-ppl-rise must be a fraction >= 0 (0.5 = 50% higher), got {r}");
        }
    }
    // (after --allocate search has given every linear its budgeted setting)
    if !drop_only {
        let modules = crate::compressible_modules(&src.config, 0..n_layers_orig);
        Plan::new(&recipe, &modules).with_context(plan_context)?;
    }
    let sequential = match a.sequential.as_str() {
        "group" => shrink_pipeline::Sequential::Group,
        "layer" => shrink_pipeline::Sequential::Layer,
        o => bail!("unknown --sequential '{o}' (use group or layer)"),
    };
    let moe = match a.moe_calibration.as_str() {
        "routed" => shrink_pipeline::MoeCalibration::Routed,
        "all" => shrink_pipeline::MoeCalibration::All,
        "fallback-rtn" => shrink_pipeline::MoeCalibration::FallbackRtn,
        o => bail!("unknown --moe-calibration '{o}' (use routed, all or fallback-rtn)"),
    };
    // What the output is evaluated on, read and checked before any work.
    let eval_plan = output::EvalPlan::prepare(a)?;
    // A fresh run's calibration set (a resumed run reads its own from the checkpoint): needed
    // for compressing and for the angular / bi scores.
    let needs_calib =
        !drop_only || drop_req.is_some_and(|r| r.score.needs_data()) || merge_req.is_some();
    // Data-free: every method needs no activations (RTN, magnitude) and nothing else asks for
    // calibration data; without calibration text each layer is compressed as it is read, with no
    // forward pass (and no errors in the report: give --calib to have them measured).
    if recipe.awq.is_some()
        && !recipe
            .stage
            .iter()
            .any(|s| crate::build_method(s).is_ok_and(|m| m.quant_grid().is_some()))
    {
        bail!(
            "AWQ searches its scales for a quantization grid, and no stage quantizes: give \
             --bits (with --method rtn or gptq), or --method awq --bits N"
        );
    }
    let data_free = allocate == "uniform"
        && !recipe.transforms_need_data()
        && a.max_ppl_rise.is_none()
        && !drop_req.is_some_and(|r| r.score.needs_data())
        && merge_req.is_none()
        && recipe.stage.iter().all(|s| {
            crate::build_method(s).is_ok_and(|m| m.needs() == shrink_methods::Needs::Nothing)
        });
    let mut calib = if needs_calib && !a.resume {
        Some(load_calib(a, &recipe.calibration, &src, data_free, ui)?)
    } else {
        None
    };
    let (dropped, merged) = removed_layers(
        a,
        &src,
        &recipe,
        drop_req,
        merge_req,
        calib.as_ref(),
        &merge_label,
        ui,
    )?;
    // From here on, `src` is the pruned model: layers renumbered, config and names following.
    let src = match (&dropped, &merged) {
        (Some(d), _) => {
            recipe.drop_layers = d.layers.clone();
            src.keep_layers(&d.kept)?
        }
        (None, Some(m)) => {
            recipe.merge_layers = m.merges.clone();
            src.merge_layers(m.comp.clone())?
        }
        (None, None) => src,
    };
    // each layer of the pruned model by (the first of) its original layer(s)
    let keep: Vec<usize> = match (&dropped, &merged) {
        (Some(d), _) => d.kept.clone(),
        (None, Some(m)) => crate::merge::heads(&m.comp),
        (None, None) => (0..total_layers).collect(),
    };
    let layer_merge_json = merged.as_ref().map(|m| {
        let mut v = m.info.clone();
        v["merges"] = json!(m.merges);
        v["layers"] = crate::merge::describe(&m.comp);
        v["layers_before"] = json!(total_layers);
        v["layers_after"] = json!(m.comp.len());
        v
    });
    let layer_drop_json = dropped.as_ref().map(|d| {
        let mut v = d.info.clone();
        v["dropped"] = json!(d.layers);
        v["kept"] = json!(d.kept);
        v["layers_before"] = json!(total_layers);
        v["layers_after"] = json!(d.kept.len());
        v
    });
    if drop_only {
        return write_pruned(
            a,
            &src,
            &recipe,
            calib.as_ref(),
            (layer_drop_json, layer_merge_json),
            &eval_plan,
            ui,
        );
    }
    let n_layers = a
        .layers
        .unwrap_or(src.config.num_layers)
        .min(src.config.num_layers);
    // The plan, resolved on the original layer numbers of the kept layers, then named as the
    // pruned model names them.
    let to_orig =
        |m: &str| crate::layers::map_layer_name(m, |i| keep.get(i).copied()).unwrap_or(m.into());
    let to_new = |m: &str| {
        crate::layers::map_layer_name(m, |i| keep.iter().position(|&k| k == i)).unwrap_or(m.into())
    };
    // The compressed linears' shapes, named as the (pruned) model names them.
    let shapes = crate::compressible_shapes(&src.config, 0..n_layers);
    let modules: Vec<String> = crate::compressible_modules(&src.config, 0..n_layers)
        .iter()
        .map(|m| to_orig(m))
        .collect();
    let plan_context_dropped = || match (&dropped, &merged) {
        (Some(d), _) => format!(
            "{} (with layers {:?} dropped: patterns use the original layer numbers)",
            plan_context(),
            d.layers
        ),
        (None, Some(m)) => format!(
            "{} (with layers merged {:?}: patterns name a merged layer by its first original \
             layer)",
            plan_context(),
            m.merges
        ),
        (None, None) => plan_context(),
    };
    let mut plan = Plan::new(&recipe, &modules)
        .with_context(plan_context_dropped)?
        .renamed(to_new);
    let settings = json!({
        "model": a.model,
        "sequential": sequential,
        "moe_calibration": moe,
        "moe_min_tokens": a.moe_min_tokens,
        "recipe": {"recipe": recipe, "calib_ids": a.calib_ids},
        "layers": n_layers,
        "layer_drop": drop_req,
        "layer_merge": merge_req,
        "rotation": rotation_json,
    });
    let (ckpt, calib, start, hidden, mut done_reports) = if a.resume {
        let (ckpt, r) = Checkpoint::resume(&a.out, &settings, src.config.vocab_size)?;
        ui.info(&format!(
            "resuming from {}: {} of {n_layers} layers already done",
            ckpt.dir.display(),
            r.next_layer
        ));
        (ckpt, r.calib, r.next_layer, r.hidden, r.reports)
    } else {
        let calib = calib.take().expect("loaded above");
        let ckpt = Checkpoint::create(&a.out, &settings, &calib)?;
        (ckpt, calib, 0, None, vec![])
    };
    let (nsamples, seqlen, seed) = (calib.nsamples, calib.seqlen, calib.seed);
    if seqlen > src.config.max_position_embeddings {
        ui.notice(&format!(
            "warning: calibration seqlen {seqlen} exceeds the model's max_position_embeddings {}",
            src.config.max_position_embeddings
        ));
    }
    let layers_dir = ckpt.layers_dir();
    if nsamples == 0 {
        ui.info(&format!(
            "compressing {} with {} ({} layers), data-free: no calibration text, each layer's \
             weights compressed as they are read (no forward pass)",
            a.model.display(),
            plan.name(),
            n_layers,
        ));
    } else {
        ui.info(&format!(
            "compressing {} with {} ({} layers), calibration {} x {} tokens from {}{}",
            a.model.display(),
            plan.name(),
            n_layers,
            nsamples,
            seqlen,
            calib.source,
            if a.calib_ids.is_some() {
                String::new() // saved token ids: drawn elsewhere, with their own seed
            } else {
                format!(" (seed {seed})")
            }
        ));
    }
    // OWL: one dense pass over the calibration data measures every layer, then the recipe gets
    // one sparsity override per layer.
    if let (Some((_, st)), None) = (agent.as_mut(), a.agent_layers) {
        st.layers_per_step = n_layers.div_ceil(6).max(1); // of the layers left after any drop
    }
    let allocated = allocate_layers(
        a,
        &src,
        &calib,
        n_layers,
        &keep,
        owl.as_ref(),
        agent.as_ref(),
        &mut recipe,
        ui,
    );
    let mut allocation = match allocated {
        Ok(Some(v)) => {
            plan = Plan::new(&recipe, &modules)
                .with_context(plan_context_dropped)?
                .renamed(to_new);
            Some(v)
        }
        Ok(None) => None,
        Err(e) => {
            // Nothing was compressed yet: leave no checkpoint behind.
            if !a.resume {
                ckpt.remove();
            }
            return Err(e);
        }
    };
    if let Some(search) = &search {
        let (r, alloc) = search.run(&recipe, &src, &calib, n_layers, ui)?;
        recipe = r;
        plan = Plan::new(&recipe, &modules)
            .with_context(plan_context_dropped)?
            .renamed(to_new);
        allocation = Some(alloc);
    }
    let bar = ui.bar(n_layers as u64, "layers");
    bar.set_position(start as u64);
    let mut sink = LayerFiles {
        ckpt: &ckpt,
        hidden_size: src.config.hidden_size,
    };
    let run = shrink_pipeline::run_from(
        &src,
        &calib,
        &plan,
        start..n_layers,
        hidden,
        &shrink_pipeline::Options {
            sequential,
            moe,
            min_expert_tokens: a.moe_min_tokens,
            awq: recipe.awq.as_ref().map(|w| w.config()),
            smooth: recipe.smooth,
        },
        &mut sink,
        &mut |d, _| bar.set_position((start + d) as u64),
    );
    bar.finish_and_clear();
    let mut report = match run {
        Ok(r) => r,
        Err(e) => {
            let done = std::fs::read_dir(&layers_dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                        .count()
                })
                .unwrap_or(0);
            let t = a.out.display();
            if a.out.exists() {
                ui.notice(&format!("note: {t} was left unchanged"));
            } else {
                ui.notice(&format!("note: {t} was not created"));
            }
            if done == 0 {
                ckpt.remove();
                return Err(e);
            }
            return Err(e.context(format!(
                "{} finished layers are kept in {}: fix the problem and rerun the same command \
                 with --resume",
                done,
                ckpt.dir.display()
            )));
        }
    };
    done_reports.append(&mut report.layers);
    report.layers = done_reports;
    let peak_compress = shrink_eval::peak_rss_mb();
    for l in &report.layers {
        for lin in &l.linears {
            if lin
                .info
                .get("damp_retries")
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
                > 0
            {
                ui.notice(&format!(
                    "warning: {}: Hessian not positive definite; damping raised to {}",
                    lin.name, lin.info["damp"]
                ));
            }
        }
    }

    let n_lin: usize = report.layers.iter().map(|l| l.linears.len()).sum();
    let mean_err = report
        .layers
        .iter()
        .flat_map(|l| l.linears.iter().map(|x| x.rel_error))
        .sum::<f64>()
        / n_lin.max(1) as f64;
    // Assemble the output: compressed layers over the original model's other tensors. A failure
    // here keeps the checkpoint: --resume then only redoes the assembly.
    let finish = || -> Result<(PathBuf, f64, serde_json::Value)> {
        let t = std::time::Instant::now();
        let layer_src = SafetensorsSource::open(&layers_dir)?;
        let overlay = Overlay {
            primary: &layer_src,
            fallback: src.tensors.as_ref(),
        };
        let dir = OutputDir::create(&a.out, a.force)?;
        std::fs::copy(
            ckpt.dir.join("calibration_ids.safetensors"),
            dir.join("calibration_ids.safetensors"),
        )
        .with_context(|| {
            format!(
                "{}: cannot write",
                dir.join("calibration_ids.safetensors").display()
            )
        })?;
        write_hf_files(&src, &overlay, &dir, "compress", &mut |_, _| {})?;
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), "shrink-quantized-v1".into());
        meta.insert("method".into(), plan.name());
        let main = plan.main_setting();
        if let Some(stage) = main.quant_stage() {
            meta.insert("stage".into(), serde_json::to_string(stage)?);
        }
        meta.insert("stages".into(), serde_json::to_string(&main.stages)?);
        // Per linear, where the settings differ: the quantized grid of each (export reads it).
        if plan.settings.len() > 1 {
            let per: BTreeMap<&str, &Stage> = plan
                .modules
                .iter()
                .filter_map(|(m, slot)| match slot {
                    Slot::Setting(k) => plan.settings[*k].quant_stage().map(|s| (m.as_str(), s)),
                    Slot::Keep(_) => None,
                })
                .collect();
            meta.insert("linear_stages".into(), serde_json::to_string(&per)?);
        }
        // The perplexity guard, on the held-in calibration windows.
        let guard = match a.max_ppl_rise {
            Some(r) => {
                let (o, q) = holdin_perplexity(&a.model, &src, &overlay, &calib, a.holdin_samples)?;
                let rise = q / o - 1.0;
                if rise > r {
                    bail!(
                        "held-in perplexity rose from {o:.4} to {q:.4} ({:+.2}%), more than \
                         --max-ppl-rise {r}: the output was not written",
                        100.0 * rise
                    );
                }
                Some(
                    json!({"max_rise": r, "original": o, "compressed": q, "rise": rise,
                            "windows": a.holdin_samples.min(calib.nsamples), "seqlen": calib.seqlen}),
                )
            }
            None => None,
        };
        let n_quant = write_quantized(&layer_src, &dir.join("quantized.safetensors"), meta)?;
        drop(layer_src);
        let write_s = t.elapsed().as_secs_f64();

        let mut out = json!({
            "shrink_version": env!("CARGO_PKG_VERSION"),
            "model": a.model,
            "method": plan.name(),
            "recipe": recipe,
            "plan": plan.summary(),
            "allocation": allocation,
            "guard": guard,
            "layer_drop": layer_drop_json,
            "layer_merge": layer_merge_json,
            "rotation": rotation_json,
            "calibration": calib,
            "layers_compressed": n_layers,
        "sequential": sequential,
            "resumed_at_layer": a.resume.then_some(start),
            "quantized_linears": n_quant,
            "layers": report.layers,
            "totals": {
                "pipeline_seconds": report.seconds,
                "phases": report.phases,
                "assemble_seconds": write_s,
                "mean_rel_error": mean_err,
                "sparsity": shrink_pipeline::total_sparsity(report.layers.iter().flat_map(|l| &l.linears)),
                "bpw": target::plan_bpw(&plan, &shapes).map(|t| json!({
                    "bpw": t.bpw(), "file_bits": t.bits, "weights": t.weights,
                    "counted": "compressed linears; codes, f16 scales, zero points, g_idx as exported to compressed-tensors",
                })),
                "peak_rss_mb": peak_compress,
            },
        });
        if let Some(v) = eval_plan.run(a, &dir.join(""), "compressed", ui)? {
            out["eval"] = v;
        }
        write_json(&dir.join("report.json"), &out)?;
        // The recipe that reproduces this run (`--recipe DIR/recipe.toml`).
        std::fs::write(dir.join("recipe.toml"), recipe.to_toml()?)
            .with_context(|| format!("{}: cannot write", dir.join("recipe.toml").display()))?;
        Ok((dir.commit()?, write_s, out))
    };
    let (path, write_s, report_json) = finish().map_err(|e| {
        e.context(format!(
            "all {n_layers} layers are compressed and kept in {}: fix the problem and rerun the \
             same command with --resume to write the output",
            ckpt.dir.display()
        ))
    })?;
    ckpt.remove();
    ui.info(&format!(
            "wrote {} in {:.1} s (pipeline {:.1} s: forward {:.1}, hessian {:.1}, solve {:.1}); {}; peak RSS {:.0} MB",
            path.display(),
            report.seconds + write_s,
            report.seconds,
            report.phases.forward,
            report.phases.hessian,
            report.phases.solve,
            if calib.nsamples == 0 {
                "data-free: errors not measured (give --calib to measure them)".to_string()
            } else {
                format!("mean relative output error {mean_err:.3e}")
            },
            peak_compress.unwrap_or(f64::NAN)
        ));
    Ok(Outcome {
        path,
        report: report_json,
    })
}
