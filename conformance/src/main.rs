//! `hearthnet-conformance`: the black-box conformance runner. This first cut
//! lists the capabilities a target could be certified for; the runner itself
//! arrives with the conformance work.

use clap::{Parser, Subcommand};

/// Certifies HearthNet implementations over the wire.
#[derive(Parser)]
#[command(name = "hearthnet-conformance", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List the capabilities of the protocol with their spec clauses.
    List,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::List) => {
            for c in hearthnet_sdk::registry::registry() {
                println!("{}@{}\t{}", c.name, c.version, c.clauses.join(","));
            }
        }
        None => {
            println!(
                "hearthnet-conformance {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                hearthnet_sdk::PROTOCOL_VERSION
            );
        }
    }
}
