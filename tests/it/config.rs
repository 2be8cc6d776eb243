//! Start-up refuses a bad config file with a message that names the key, and makes a relative
//! storage path absolute against the config file's folder.

use crate::support::TestServer;

fn refused(extra: &str) -> String {
    match TestServer::builder().toml(extra).try_start() {
        Ok(_) => panic!("the server started with {extra:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_config_stops_start_up_naming_the_key() {
    for (extra, key) in [
        ("[server]\nmax_concurent = 2", "max_concurent"),
        ("[limits]\nmemory = \"plenty\"", "limits.memory"),
        ("[limits]\ntimeout = \"soon\"", "limits.timeout"),
        ("[server]\nhost = \"example\"", "server.host"),
        (
            "[[auth.api_keys]]\nname = \"ci\"\nkey = \"${PRECHECK_TEST_SURELY_UNSET}\"",
            "auth.api_keys[0].key",
        ),
    ] {
        let error = refused(extra);
        assert!(error.contains(key), "{extra:?}: {error}");
    }
}

#[test]
fn relative_storage_path_is_resolved_against_the_config_folder() {
    let server = TestServer::builder()
        .set("server.storage_path", "./nested/../store")
        .start();
    let config_dir = server.config_path.parent().unwrap();
    assert!(config_dir.join("store").join("precheck.sqlite").is_file());
}
