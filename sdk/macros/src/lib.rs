//! Procedural macros of `airlock-sdk`. Use them through `airlock-sdk`
//! (`airlock_sdk::generate!`), which re-exports what they expand to.

use proc_macro::{Delimiter, TokenStream, TokenTree};
use std::path::PathBuf;

/// Embed the doc comments of an action's WIT package in the component, as
/// the `package-docs` custom section wit-component defines (a version byte,
/// then JSON), so hosts can describe the action's functions, parameters,
/// types, fields and cases without the WIT files.
///
/// Takes the same `{ path: "...", world: "..." }` options as
/// `wit_bindgen::generate!` (others are ignored); `path` defaults to `wit`,
/// relative to the crate's manifest directory.
#[proc_macro]
pub fn embed_docs(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(tokens) => tokens,
        Err(message) => format!("::core::compile_error!({message:?});")
            .parse()
            .unwrap_or_default(),
    }
}

fn expand(input: TokenStream) -> Result<TokenStream, String> {
    let options = Options::parse(input)?;
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or("CARGO_MANIFEST_DIR is not set: build with cargo")?;
    let path = root.join(options.path.as_deref().unwrap_or("wit"));
    let mut resolve = wit_parser::Resolve::default();
    let (package, sources) = resolve
        .push_path(&path)
        .map_err(|e| format!("cannot read the WIT at {}: {e:#}", path.display()))?;
    let world = resolve
        .select_world(&[package], options.world.as_deref())
        .map_err(|e| format!("{e:#}"))?;
    let package = resolve.worlds[world].package.unwrap_or(package);
    let bytes = wit_parser::PackageMetadata::extract(&resolve, package)
        .encode()
        .map_err(|e| format!("cannot encode the WIT docs: {e:#}"))?;
    let mut out = String::new();
    // Rebuild when a WIT file changes.
    for file in sources.paths() {
        out.push_str(&format!(
            "const _: &[u8] = include_bytes!({:?});\n",
            file.display().to_string()
        ));
    }
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    out.push_str(&format!(
        "#[cfg(target_family = \"wasm\")]\n\
         const _: () = {{\n\
             #[unsafe(link_section = \"package-docs\")]\n\
             #[used]\n\
             static AIRLOCK_PACKAGE_DOCS: [u8; {}] = [{}];\n\
         }};\n",
        bytes.len(),
        list.join(",")
    ));
    out.parse().map_err(|e| format!("internal error: {e:?}"))
}

#[derive(Default)]
struct Options {
    path: Option<String>,
    world: Option<String>,
}

impl Options {
    /// Read `path: "..."` and `world: "..."` out of `{ ... }`.
    fn parse(input: TokenStream) -> Result<Options, String> {
        let mut tokens: Vec<TokenTree> = input.into_iter().collect();
        if let [TokenTree::Group(g)] = tokens.as_slice()
            && g.delimiter() == Delimiter::Brace
        {
            tokens = g.stream().into_iter().collect();
        }
        let mut options = Options::default();
        for window in tokens.windows(3) {
            let [TokenTree::Ident(key), TokenTree::Punct(colon), value] = window else {
                continue;
            };
            if colon.as_char() != ':' {
                continue;
            }
            let slot = match key.to_string().as_str() {
                "path" => &mut options.path,
                "world" => &mut options.world,
                _ => continue,
            };
            let TokenTree::Literal(literal) = value else {
                return Err(format!("`{key}` must be a string literal"));
            };
            *slot = Some(
                string_literal(&literal.to_string())
                    .ok_or_else(|| format!("`{key}` must be a plain string literal"))?,
            );
        }
        Ok(options)
    }
}

/// The value of a string literal without escapes (`"wit"`, `r"wit"`).
fn string_literal(text: &str) -> Option<String> {
    let inner = text.strip_prefix('r').unwrap_or(text).trim_matches('#');
    let inner = inner.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then(|| inner.to_string())
}
