//! Prints a GGUF file's metadata (arrays summarised) and the config shrink reads from it.
//! `cargo run --release -p shrink-model --example gguf_config -- FILE.gguf`
fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: gguf_config FILE.gguf");
    let f = shrink_model::gguf::GgufFile::open(std::path::Path::new(&path))?;
    for (k, v) in f.metadata() {
        match v.as_array() {
            Some(a) => println!("{k} = [{} values]", a.len()),
            None => println!("{k} = {v:?}"),
        }
    }
    let cfg = shrink_model::source::config_from_gguf(&f)?;
    println!("{cfg:#?}");
    Ok(())
}
