//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`,
//! so a write the API acknowledged survives a restart or a `kill -9`. Each
//! write is one transaction: the changed rows and the new table version.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Model, RouteGroup, Sandbox};

pub struct Store {
    conn: Connection,
}

/// One row change inside a write.
pub enum Row<'a> {
    PutSandbox(&'a Sandbox),
    DeleteSandbox(&'a str),
    PutGroup(&'a RouteGroup),
    DeleteGroup(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot encode a row: {0}")]
    Encode(serde_json::Error),
    #[error("stored row {0:?} is not valid JSON: {1}")]
    Corrupt(String, serde_json::Error),
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit, so an acknowledged write
        // survives a crash of the machine, not only of the process.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sandboxes (name TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS route_groups (name TEXT PRIMARY KEY, body TEXT NOT NULL);",
        )?;
        Ok(Store { conn })
    }

    /// The stored model and table version.
    pub fn load(&self) -> Result<(Model, u64), StoreError> {
        // SQLite integers are i64; versions count up from 0 and stay far below i64::MAX.
        let version: i64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let version = u64::try_from(version).unwrap_or(0);
        let sandboxes: Vec<Sandbox> =
            self.rows("SELECT name, body FROM sandboxes ORDER BY name")?;
        let groups: Vec<RouteGroup> =
            self.rows("SELECT name, body FROM route_groups ORDER BY name")?;
        Ok((Model::new(sandboxes, groups), version))
    }

    fn rows<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row?;
            out.push(serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(name, e))?);
        }
        Ok(out)
    }

    /// Writes `rows` and `version` atomically.
    pub fn commit(&mut self, version: u64, rows: &[Row<'_>]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for row in rows {
            match row {
                Row::PutSandbox(s) => tx.execute(
                    "INSERT OR REPLACE INTO sandboxes (name, body) VALUES (?1, ?2)",
                    params![s.name, to_json(s)?],
                )?,
                Row::DeleteSandbox(name) => {
                    tx.execute("DELETE FROM sandboxes WHERE name = ?1", params![name])?
                }
                Row::PutGroup(g) => tx.execute(
                    "INSERT OR REPLACE INTO route_groups (name, body) VALUES (?1, ?2)",
                    params![g.name, to_json(g)?],
                )?,
                Row::DeleteGroup(name) => {
                    tx.execute("DELETE FROM route_groups WHERE name = ?1", params![name])?
                }
            };
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?1)",
            params![i64::try_from(version).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewSandbox;

    #[test]
    fn commits_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut model = Model::default();
        let new = NewSandbox {
            name: "a".into(),
            forks: [("backend".to_owned(), vec!["10.0.0.1:80".to_owned()])].into(),
            labels: Default::default(),
            ttl_seconds: None,
        };
        model.create_sandbox(new, "ka".into(), 5).unwrap();
        {
            let mut store = Store::open(&path).unwrap();
            store
                .commit(1, &[Row::PutSandbox(model.sandbox("a").unwrap())])
                .unwrap();
        }
        let (loaded, version) = Store::open(&path).unwrap().load().unwrap();
        assert_eq!((loaded, version), (model, 1));
        let mut store = Store::open(&path).unwrap();
        store.commit(2, &[Row::DeleteSandbox("a")]).unwrap();
        assert_eq!(store.load().unwrap(), (Model::default(), 2));
    }
}
