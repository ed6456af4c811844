//! Environment overrides: `TOLLGATE_SECTION__KEY=value` over the TOML file.

use anyhow::Context;

/// `TOLLGATE_SERVER__LISTEN=0.0.0.0:80` sets `server.listen`. Values are read as TOML
/// (numbers, booleans) when they parse, else as strings.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("TOLLGATE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let (last, parents) = path.split_last().expect("split yields one part at least");
        let mut node = &mut *table;
        for part in parents {
            node = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .with_context(|| format!("{name}: '{part}' is not a section"))?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}
