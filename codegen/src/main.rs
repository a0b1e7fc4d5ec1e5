//! `hearthnet-codegen`: export, regenerate, lint and compare the HearthNet protocol.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearthnet_codegen::{Protocol, breaking, lint};

/// Generator and checker for the HearthNet protocol definitions.
#[derive(Parser)]
#[command(name = "hearthnet-codegen", version, about, long_about = None)]
struct Cli {
    /// The buf module root holding `hearthnet/**.proto`.
    #[arg(long, global = true, default_value = "protocol/proto")]
    proto: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write everything another language needs: descriptor set, JSON Schemas, registry, reference docs.
    Export {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Regenerate the checked-in artefacts (protocol/generated, docs/reference).
    Generate {
        /// Repository root.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Fail when the checked-in artefacts differ from the generator's output.
    Check {
        /// Repository root.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
    },
    /// Check our rules on top of buf's (naming, docs, declared errors and events).
    Lint,
    /// List wire, JSON and capability-level breaking changes against an older descriptor set.
    Breaking {
        /// The older encoded FileDescriptorSet (e.g. an older protocol/generated/descriptor.binpb).
        #[arg(long)]
        against: PathBuf,
    },
    /// Validate a JSON document against a capability's request or response schema.
    Validate {
        /// Capability name, e.g. `llm.chat` (optionally `llm.chat@1`).
        #[arg(long, required_unless_present = "message")]
        capability: Option<String>,
        /// Validate against a message's schema instead (full name).
        #[arg(long, conflicts_with = "capability")]
        message: Option<String>,
        /// The file holds a request.
        #[arg(long, conflicts_with = "response")]
        request: Option<PathBuf>,
        /// The file holds a response (one frame, for streaming capabilities).
        #[arg(long)]
        response: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let protocol = || Protocol::compile(&cli.proto);
    match cli.command {
        Command::Export { out } => {
            let n = hearthnet_codegen::export(&protocol()?, &out)?;
            println!("wrote {n} files to {}", out.display());
        }
        Command::Generate { repo } => {
            let n = hearthnet_codegen::write_repo(&protocol()?, &repo)?;
            println!("wrote {n} files under {}", repo.display());
        }
        Command::Check { repo } => {
            let problems = hearthnet_codegen::drift(&protocol()?, &repo);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!(
                    "generated artefacts are out of date; run `{}`",
                    hearthnet_codegen::REGENERATE
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("generated artefacts are up to date");
        }
        Command::Lint => {
            let findings = lint::lint(&protocol()?);
            for f in &findings {
                println!("{f}");
            }
            if !findings.is_empty() {
                eprintln!("{} lint finding(s)", findings.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Breaking { against } => {
            let bytes =
                std::fs::read(&against).map_err(|e| format!("{}: {e}", against.display()))?;
            let old = Protocol::from_descriptor_set(&bytes)?;
            let changes = breaking::breaking(&old, &protocol()?);
            for c in &changes {
                println!("{c}");
            }
            if !changes.is_empty() {
                eprintln!("{} breaking change(s)", changes.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Validate {
            capability,
            message,
            request,
            response,
        } => {
            let p = protocol()?;
            let (file, is_request) = match (request, response) {
                (Some(f), None) => (f, true),
                (None, Some(f)) => (f, false),
                _ => return Err("give exactly one of --request FILE or --response FILE".into()),
            };
            let name = match (capability, message) {
                (_, Some(m)) => m,
                (Some(c), None) => {
                    let (cname, major) = c
                        .split_once('@')
                        .map_or((c.as_str(), None), |(a, b)| (a, Some(b)));
                    let cap = p
                        .capabilities()
                        .into_iter()
                        .find(|x| {
                            x.name == cname
                                && major.is_none_or(|m| x.version.split('.').next() == Some(m))
                        })
                        .ok_or_else(|| format!("unknown capability `{c}`"))?;
                    if is_request {
                        cap.request
                    } else {
                        cap.response
                    }
                }
                (None, None) => return Err("give --capability or --message".into()),
            };
            return validate(&p, &name, &file);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(
    p: &Protocol,
    message: &str,
    file: &Path,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let schema = p
        .schema(message, false)
        .ok_or_else(|| format!("unknown message `{message}`"))?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let instance: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: invalid JSON: {e}",
            file.display(),
            e.line(),
            e.column()
        )
    })?;
    let validator = jsonschema::validator_for(&schema)?;
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{}: {}", display_pointer(&e.instance_path().to_string()), e))
        .collect();
    if errors.is_empty() {
        println!("{}: valid {message}", file.display());
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &errors {
            println!("{e}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn display_pointer(p: &str) -> String {
    if p.is_empty() {
        "/".to_owned()
    } else {
        p.to_owned()
    }
}
