//! `precheck-server apikey generate | list | revoke`: the keys kept in the database. Keys in
//! the config file are listed too, but live and die with the file.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Admin, KeyCommand, Output, print_json, table};
use crate::api::rfc3339;
use crate::auth::{generate_key, hash_key};
use crate::config::{KEY_NAME_RULE, valid_key_name};

pub async fn run(admin: &Admin, command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Generate {
            name,
            admin: is_admin,
            output,
        } => generate(admin, name, is_admin, output).await,
        KeyCommand::List(output) => list(admin, output).await,
        KeyCommand::Revoke { name, output } => revoke(admin, &name, output).await,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Generated {
    name: String,
    key: String,
    admin: bool,
    created: String,
}

async fn generate(
    admin: &Admin,
    name: Option<String>,
    is_admin: bool,
    output: Output,
) -> Result<()> {
    let name = name.unwrap_or_else(|| format!("key-{}", &Uuid::new_v4().simple().to_string()[..8]));
    if !valid_key_name(&name) {
        bail!("--name {name:?} {KEY_NAME_RULE}");
    }
    if admin.config.auth.api_keys.iter().any(|k| k.name == name) {
        bail!(
            "a key named {name:?} is in {}: choose another name",
            admin.config_path.display()
        );
    }
    let key = generate_key().context("cannot read the OS's random source")?;
    let now = OffsetDateTime::now_utc();
    // A revoked key keeps its name: what it created must never pass to a new key.
    if !admin
        .db
        .insert_api_key(name.clone(), hash_key(&key), is_admin, now)
        .await?
    {
        bail!("a key named {name:?} exists already (perhaps revoked): choose another name");
    }
    if output.json {
        return print_json(&Generated {
            name,
            key,
            admin: is_admin,
            created: rfc3339(now),
        });
    }
    outln!("{key}")?;
    eprintln!(
        "Generated {}API key {name:?}. This is the only time it is shown: store it now.",
        if is_admin { "admin " } else { "" }
    );
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    name: String,
    /// "config" or "database".
    source: &'static str,
    admin: bool,
    created: Option<String>,
    last_used: Option<String>,
    revoked: Option<String>,
}

async fn list(admin: &Admin, output: Output) -> Result<()> {
    let from_config = admin.config.auth.api_keys.iter().map(|k| Key {
        name: k.name.clone(),
        source: "config",
        admin: k.admin,
        created: None,
        last_used: None,
        revoked: None,
    });
    let stored = admin.db.api_keys().await?.into_iter().map(|k| Key {
        name: k.name,
        source: "database",
        admin: k.admin,
        created: Some(k.created),
        last_used: k.last_used,
        revoked: k.revoked,
    });
    let keys: Vec<Key> = from_config.chain(stored).collect();
    if output.json {
        let listed: Vec<Listed> = keys
            .into_iter()
            .map(|k| Listed {
                name: k.name,
                source: k.source,
                admin: k.admin,
                created: k.created.map(rfc3339),
                last_used: k.last_used.map(rfc3339),
                revoked: k.revoked.map(rfc3339),
            })
            .collect();
        return print_json(&listed);
    }
    let now = OffsetDateTime::now_utc();
    let when =
        |t: Option<OffsetDateTime>, none: &str| t.map_or(none.into(), |t| table::ago(t, now));
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .map(|k| {
            // The config file's keys have no creation time, and their use is not recorded.
            let unknown = k.created.is_none();
            vec![
                k.name,
                k.source.into(),
                if k.admin { "yes" } else { "no" }.into(),
                when(k.created, "-"),
                when(k.last_used, if unknown { "-" } else { "never" }),
                when(k.revoked, "-"),
            ]
        })
        .collect();
    table::print(
        &["NAME", "SOURCE", "ADMIN", "CREATED", "LAST USED", "REVOKED"],
        &rows,
    )
}

/// A key from either source, before it is printed.
struct Key {
    name: String,
    source: &'static str,
    admin: bool,
    created: Option<OffsetDateTime>,
    last_used: Option<OffsetDateTime>,
    revoked: Option<OffsetDateTime>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Revoked {
    name: String,
    revoked: String,
    /// False if it had been revoked before.
    now: bool,
}

async fn revoke(admin: &Admin, name: &str, output: Output) -> Result<()> {
    if admin.config.auth.api_keys.iter().any(|k| k.name == name) {
        bail!(
            "the key {name:?} is in {}: remove it there and restart the server",
            admin.config_path.display()
        );
    }
    let now = OffsetDateTime::now_utc();
    let revoked_now = admin.db.revoke_api_key(name.to_string(), now).await?;
    let keys = admin.db.api_keys().await?;
    let Some(revoked) = keys.iter().find(|k| k.name == name).and_then(|k| k.revoked) else {
        bail!("no API key named {name:?}: `apikey list` shows them");
    };
    if output.json {
        return print_json(&Revoked {
            name: name.to_string(),
            revoked: rfc3339(revoked),
            now: revoked_now,
        });
    }
    if revoked_now {
        outln!("Revoked API key {name:?}: it fails from its next request on.")?;
    } else {
        outln!(
            "API key {name:?} was revoked already, {}.",
            table::ago(revoked, now)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[[auth.api_keys]]\nname = \"ops\"\nkey = \"ws_key_value_0123456789\"";

    #[tokio::test]
    async fn a_new_key_needs_a_good_name_no_other_key_has() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Admin::in_temp(dir.path(), CONFIG);
        let now = OffsetDateTime::now_utc();
        assert!(
            admin
                .db
                .insert_api_key("ci".into(), hash_key("k"), false, now)
                .await
                .unwrap()
        );
        admin.db.revoke_api_key("ci".into(), now).await.unwrap();
        let config = admin.config_path.display().to_string();
        let long = "k".repeat(65);
        let cases = [
            (
                "",
                "--name \"\" must be 1 to 64 letters, digits, '-', '_' or '.'".to_string(),
            ),
            ("two words", format!("--name \"two words\" {KEY_NAME_RULE}")),
            ("ci/1", format!("--name \"ci/1\" {KEY_NAME_RULE}")),
            (long.as_str(), format!("--name {long:?} {KEY_NAME_RULE}")),
            (
                "ops",
                format!("a key named \"ops\" is in {config}: choose another name"),
            ),
            (
                "ci",
                "a key named \"ci\" exists already (perhaps revoked): choose another name".into(),
            ),
        ];
        for (name, message) in cases {
            let output = Output { json: true };
            let e = generate(&admin, Some(name.into()), false, output)
                .await
                .unwrap_err();
            assert_eq!(e.to_string(), message, "{name:?}");
        }
        assert_eq!(admin.db.api_keys().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn only_a_key_of_the_database_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Admin::in_temp(dir.path(), CONFIG);
        let output = Output { json: true };
        let e = revoke(&admin, "ops", output).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the key \"ops\" is in {}: remove it there and restart the server",
                admin.config_path.display()
            )
        );
        let e = revoke(&admin, "nobody", output).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no API key named \"nobody\": `apikey list` shows them"
        );
    }
}
