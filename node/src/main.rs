//! `hearthnet`: the HearthNet node. This first cut only reports its version and
//! the protocol it implements; `run`, `call` and friends arrive with the
//! node-core work.

use clap::{Parser, Subcommand};

/// A HearthNet node: a local-first community AI mesh.
#[derive(Parser)]
#[command(name = "hearthnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the node, protocol and descriptor versions.
    Version,
    /// List every capability of the protocol this build knows.
    Caps,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Caps) => {
            for c in hearthnet_sdk::registry::registry() {
                println!(
                    "{}@{}\t{}\t{:?}",
                    c.name, c.version, c.stability, c.streaming
                );
            }
        }
        Some(Command::Version) | None => {
            println!("hearthnet {}", env!("CARGO_PKG_VERSION"));
            println!("protocol {}", hearthnet_sdk::PROTOCOL_VERSION);
            println!("descriptor {}", hearthnet_sdk::registry::DESCRIPTOR_HASH);
        }
    }
}
