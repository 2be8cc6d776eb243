//! `precheck-server engines list | drain | resume`: the Docker engines of the config, as they are
//! now, and which of them take new runs. The drained set is in the database: the running server
//! reads it in the same statement as every claim of a run, so a drain holds from the moment the
//! command returns, and it survives a restart.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::Serialize;
use time::OffsetDateTime;

use super::{Admin, EnginesCommand, Output, print_json, table};
use crate::config::{Config, EngineConfig};
use crate::docker::{Engine, host_name};
use crate::model::RunKind;

pub async fn run(admin: &Admin, command: EnginesCommand) -> Result<()> {
    match command {
        EnginesCommand::List(output) => list(admin, output).await,
        EnginesCommand::Drain { name } => set(admin, &name, true).await,
        EnginesCommand::Resume { name } => set(admin, &name, false).await,
    }
}

/// One engine in `engines list --json`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct EngineRow {
    name: String,
    host: String,
    reachable: bool,
    version: Option<String>,
    error: Option<String>,
    drained: bool,
    /// Runs running on it, as the database has them.
    running: u64,
    /// How many may run on it at once; null if that is the engine's memory and it does not answer.
    slots: Option<usize>,
    image: ImageRow,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "PascalCase")]
struct ImageRow {
    name: String,
    /// Its id on the engine; null if the engine does not have it (or does not answer).
    id: Option<String>,
}

async fn list(admin: &Admin, output: Output) -> Result<()> {
    let config = &admin.config;
    let drained = admin.db.drained_engines().await?;
    let running = admin.db.running_per_engine().await?;
    let looks = config.engines.iter().enumerate().map(|(i, e)| {
        let drained = drained.contains(&e.name);
        let running = running_on(&running, config, i);
        look(admin, e, drained, running)
    });
    let rows = futures_util::future::join_all(looks).await;
    if output.json {
        return print_json(&rows);
    }
    let lines: Vec<Vec<String>> = rows.iter().map(row_text).collect();
    table::print(
        &[
            "NAME", "HOST", "STATE", "DRAINED", "RUNNING", "SLOTS", "IMAGE",
        ],
        &lines,
    )
}

/// The runs running on the `i`th engine; runs from before engines were recorded count for the
/// first, where the server looks for them.
fn running_on(running: &HashMap<String, u64>, config: &Config, i: usize) -> u64 {
    let named = running.get(&config.engines[i].name).copied().unwrap_or(0);
    let unnamed = running.get("").copied().unwrap_or(0);
    named + if i == 0 { unnamed } else { 0 }
}

/// An engine as it answers now (each one within the admin commands' wait).
async fn look(admin: &Admin, e: &EngineConfig, drained: bool, running: u64) -> EngineRow {
    let mut row = EngineRow {
        name: e.name.clone(),
        host: host_name(&e.host),
        reachable: false,
        version: None,
        error: None,
        drained,
        running,
        slots: e.max_concurrent,
        image: ImageRow {
            name: admin.config.image.clone(),
            id: None,
        },
    };
    let engine = match admin.engine(e).await {
        Ok(engine) => engine,
        Err(error) => {
            row.error = Some(format!("{error:#}"));
            return row;
        }
    };
    match engine.version().await {
        Ok(v) => {
            row.reachable = true;
            row.version = Some(v.version);
        }
        Err(error) => {
            row.error = Some(format!("{error:#}"));
            return row;
        }
    }
    if row.slots.is_none() {
        row.slots = slots_from_memory(&engine, &admin.config).await;
    }
    row.image.id = engine.image_id(&admin.config.image).await.ok().flatten();
    row
}

/// What the server makes of an engine without `max_concurrent`: its memory / `limits.memory`,
/// at least 1.
async fn slots_from_memory(engine: &Engine, config: &Config) -> Option<usize> {
    let memory = engine.memory().await.ok()?;
    let per_run = config.limits_for(RunKind::Precheck).0.memory.max(1);
    Some(
        usize::try_from(memory / per_run)
            .unwrap_or(usize::MAX)
            .max(1),
    )
}

fn row_text(r: &EngineRow) -> Vec<String> {
    let state = match (&r.version, &r.error) {
        (Some(v), _) => format!("up ({v})"),
        (None, Some(e)) => format!("down: {e}"),
        (None, None) => "down".into(),
    };
    let image = match (&r.image.id, r.reachable) {
        (Some(_), _) => "present",
        (None, true) => "missing",
        (None, false) => "?",
    };
    vec![
        r.name.clone(),
        r.host.clone(),
        state,
        if r.drained { "yes" } else { "no" }.into(),
        r.running.to_string(),
        r.slots.map_or("?".into(), |s| s.to_string()),
        image.into(),
    ]
}

async fn set(admin: &Admin, name: &str, drained: bool) -> Result<()> {
    let config = &admin.config;
    let Some(i) = config.engines.iter().position(|e| e.name == name) else {
        bail!("{}", unknown_engine(name, config, &admin.config_path));
    };
    let changed = admin
        .db
        .set_drained(name.to_string(), drained, OffsetDateTime::now_utc())
        .await?;
    let running = running_on(&admin.db.running_per_engine().await?, config, i);
    outln!("{}", set_message(name, drained, changed, running))
}

/// What `drain` and `resume` print.
fn set_message(name: &str, drained: bool, changed: bool, running: u64) -> String {
    let runs = match running {
        1 => "the run on it goes on to its end".to_string(),
        n => format!("the {n} runs on it go on to their end"),
    };
    match (drained, changed) {
        (true, true) => format!("engine {name} drained: it takes no new runs; {runs}"),
        (true, false) => format!("engine {name} was already drained: it takes no new runs; {runs}"),
        (false, true) => format!("engine {name} resumed: it takes runs again"),
        (false, false) => format!("engine {name} was not drained: it takes runs"),
    }
}

fn unknown_engine(name: &str, config: &Config, path: &std::path::Path) -> String {
    let names: Vec<&str> = config.engines.iter().map(|e| e.name.as_str()).collect();
    format!(
        "no engine {name:?} in {}: its engines are {}",
        path.display(),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_and_resume_say_what_they_did() {
        assert_eq!(
            set_message("big-1", true, true, 2),
            "engine big-1 drained: it takes no new runs; the 2 runs on it go on to their end"
        );
        assert_eq!(
            set_message("big-1", true, false, 1),
            "engine big-1 was already drained: it takes no new runs; the run on it goes on to its end"
        );
        assert_eq!(
            set_message("big-1", false, true, 0),
            "engine big-1 resumed: it takes runs again"
        );
        assert_eq!(
            set_message("big-1", false, false, 0),
            "engine big-1 was not drained: it takes runs"
        );
    }

    #[test]
    fn an_unknown_engine_is_named_with_the_known_ones() {
        let text = "[[engines]]\nname = \"local\"\nhost = \"unix:///run/d.sock\"\n\
                    [[engines]]\nname = \"big-1\"\nhost = \"tcp://h:2375\"\n";
        let config = Config::parse(text, std::path::Path::new("/"), &|_| None).unwrap();
        assert_eq!(
            unknown_engine("x", &config, std::path::Path::new("/etc/p.toml")),
            "no engine \"x\" in /etc/p.toml: its engines are local, big-1"
        );
        let mut running = HashMap::from([("big-1".to_string(), 2), (String::new(), 1)]);
        assert_eq!(
            running_on(&running, &config, 0),
            1,
            "old runs count for the first"
        );
        assert_eq!(running_on(&running, &config, 1), 2);
        running.clear();
        assert_eq!(running_on(&running, &config, 1), 0);
    }

    #[test]
    fn a_row_reads_as_a_line_and_as_json() {
        let row = EngineRow {
            name: "big-1".into(),
            host: "tcp://h:2375".into(),
            reachable: false,
            version: None,
            error: Some("it did not answer".into()),
            drained: true,
            running: 1,
            slots: None,
            image: ImageRow {
                name: "img".into(),
                id: None,
            },
        };
        assert_eq!(
            row_text(&row),
            [
                "big-1",
                "tcp://h:2375",
                "down: it did not answer",
                "yes",
                "1",
                "?",
                "?"
            ]
        );
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({"Name": "big-1", "Host": "tcp://h:2375", "Reachable": false,
                "Version": null, "Error": "it did not answer", "Drained": true, "Running": 1,
                "Slots": null, "Image": {"Name": "img", "Id": null}})
        );
    }
}
