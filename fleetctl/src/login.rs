//! `fleetctl login`: remember a server and token in the profile.

use fleet_api::enroll;

use crate::client::{self, print_json, Client, Failure};

pub fn login(json: bool, token: Option<&str>, client: &Client) -> Result<(), Failure> {
    let me: fleet_api::WhoAmI = client.get("/api/v1/whoami")?;
    let path = client::profile_path()
        .ok_or_else(|| Failure::usage("no home directory to keep the login in (set HOME)"))?;
    let profile = client::Profile {
        server: Some(client.server.clone()),
        token: token.map(str::to_owned).or_else(|| client::read_profile().token),
    };
    let text = toml::to_string(&profile).map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    }
    enroll::write_file(&path, text.as_bytes(), 0o600)
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    if json {
        print_json(&me);
    } else {
        println!("logged in to {} as {} ({})", client.server, me.name, me.role);
        eprintln!("saved in {} (mode 0600)", path.display());
    }
    Ok(())
}
