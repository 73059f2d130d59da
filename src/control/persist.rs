//! The state directory: the last accepted config and its generation, so that a restart
//! (after a crash too) resumes what was running.
//!
//! Owns one file, `config.json` (`{"generation": N, "config": {...}}`), replaced
//! atomically: write a temporary file, fsync it, rename it over the old one, fsync the
//! directory. A reader therefore sees either the old or the new generation, never a mix.
//! Never called on the data path.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::Config;

const FILE: &str = "config.json";
const TEMP: &str = "config.json.tmp";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub generation: u64,
    pub config: Config,
}

/// A state directory, created (mode 0700) if missing.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: impl Into<PathBuf>) -> anyhow::Result<StateDir> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The persisted config file.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The last persisted config, `None` when nothing was persisted yet. A file that
    /// cannot be read or parsed is an error (never silently replaced by a default).
    pub fn load(&self) -> anyhow::Result<Option<Persisted>> {
        let path = self.file();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let p: Persisted = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is not a tickmesh state file; start with --config FILE to replace it",
                path.display()
            )
        })?;
        Ok(Some(p))
    }

    /// Persist `config` as `generation`: durable once this returns `Ok`.
    pub fn store(&self, generation: u64, config: &Config) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(&Persisted {
            generation,
            config: config.clone(),
        })
        .map_err(io::Error::other)?;
        let temp = self.dir.join(TEMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        fs::rename(&temp, self.file())?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format, DEFAULT_CONFIG};

    #[test]
    fn store_then_load_round_trips_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path().join("a/b")).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let c = parse(DEFAULT_CONFIG, Format::Yaml).unwrap();
        s.store(3, &c).unwrap();
        s.store(4, &Config::default()).unwrap();
        let p = s.load().unwrap().unwrap();
        assert_eq!(p.generation, 4);
        assert_eq!(p.config, Config::default());
        assert!(!tmp.path().join("a/b").join(TEMP).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(s.file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_a_default() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path()).unwrap();
        fs::write(
            s.file(),
            b"{\"generation\": 2, \"config\": {\"listeners\": [",
        )
        .unwrap();
        let e = format!("{:#}", s.load().unwrap_err());
        assert!(e.contains("not a tickmesh state file"), "{e}");
    }
}
