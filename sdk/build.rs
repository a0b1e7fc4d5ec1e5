//! Generates the protocol's Rust code into `OUT_DIR` from `../protocol/proto`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    let protocol = match hearthnet_codegen::Protocol::compile(&root) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = hearthnet_codegen::rust::generate(&protocol, &out) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
