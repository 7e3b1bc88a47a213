//! The daemon's state record: what it installed, by task id, so that a restarted daemon knows
//! what it manages (and can remove a task whose file was deleted while it was down). Written
//! atomically (a temporary file renamed over the old one), so a daemon killed mid-write leaves
//! the old record or the new one, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reconcile::Installed;

/// The record's file name inside the state directory.
pub const FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state record {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    tasks: Vec<Installed>,
}

/// The record in `dir`, by task id; empty when there is none yet.
pub fn load(dir: &Path) -> Result<BTreeMap<String, Installed>, Error> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(Error::Io { op: "read", path, source }),
    };
    let record: Record = serde_json::from_str(&text).map_err(|source| Error::Parse { path, source })?;
    Ok(record.tasks.into_iter().map(|t| (t.id.clone(), t)).collect())
}

/// Replaces the record in `dir` (created if missing) with `tasks`.
pub fn save(dir: &Path, tasks: &BTreeMap<String, Installed>) -> Result<(), Error> {
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let record = Record { tasks: tasks.values().cloned().collect() };
    let json = serde_json::to_vec_pretty(&record).expect("the record serializes");
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&json).map_err(io("write", &tmp))?;
    // Durable before the rename makes it the record.
    file.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Kind;

    #[test]
    fn save_then_load_round_trips_and_a_missing_record_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("daemon");
        assert!(load(&sub).unwrap().is_empty());
        let tasks: BTreeMap<String, Installed> = ["a", "b"]
            .into_iter()
            .map(|id| {
                let t = Installed {
                    id: id.into(),
                    backend: Kind::Ebpf,
                    cgroup: format!("/ecs/{id}"),
                    netns: None,
                    fingerprint: 7,
                    source: Default::default(),
                    netns_inode: None,
                    cgroup_id: None,
                };
                (id.to_owned(), t)
            })
            .collect();
        save(&sub, &tasks).unwrap();
        assert_eq!(load(&sub).unwrap(), tasks);
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "{").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("the state record {} is not valid", dir.path().join(FILE).display())),
            "{err}"
        );
    }
}
