//! Fills `${NAME}` placeholders (NAME: `A-Z`, `0-9`, `_`) in the shipped
//! templates. A multi-line value keeps the indentation of the line it is
//! placed on, so a JSON document drops into a YAML block scalar.

use anyhow::{bail, Result};

pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        let indent: String = line.chars().take_while(|c| *c == ' ').collect();
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let (before, after) = rest.split_at(start);
            out.push_str(before);
            let Some(end) = after.find('}') else { break };
            let name = after.get(2..end).unwrap_or_default();
            let is_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !is_name {
                out.push_str(after.get(..end + 1).unwrap_or_default());
            } else {
                let Some((_, value)) = vars.iter().find(|(n, _)| *n == name) else {
                    bail!("template placeholder ${{{name}}} has no value");
                };
                out.push_str(&value.trim_end().replace('\n', &format!("\n{indent}")));
            }
            rest = after.get(end + 1..).unwrap_or_default();
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_indents() {
        let t = "a: ${X}\n  v: |\n    ${DOC}\n# ${...} stays\n";
        let got = render(t, &[("X", "1"), ("DOC", "{\n  \"k\": 2\n}\n")]).unwrap();
        assert_eq!(
            got,
            "a: 1\n  v: |\n    {\n      \"k\": 2\n    }\n# ${...} stays\n"
        );
    }

    #[test]
    fn missing_value_is_an_error() {
        assert!(render("${NOPE}", &[])
            .unwrap_err()
            .to_string()
            .contains("NOPE"));
    }
}
