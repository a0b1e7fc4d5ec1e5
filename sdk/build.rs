//! Generates the protocol's Rust code into `OUT_DIR` from `../protocol/proto`.

fn main() {
    // HEARTHNET_PROTO_DIR lets a developer build against another copy of the
    // definitions (e.g. a snapshot while editing); the default is the repo's.
    println!("cargo:rerun-if-env-changed=HEARTHNET_PROTO_DIR");
    let root = match std::env::var_os("HEARTHNET_PROTO_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        // Read at run time, not with env!(): cargo reuses a compiled build
        // script when the checkout moves, and a baked-in path goes stale.
        None => std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR set by cargo"),
        )
        .join("../protocol/proto"),
    };
    println!("cargo:rerun-if-changed={}", root.display());
    if let Some(dir) = root.parent() {
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("constants.json").display()
        );
    }
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
