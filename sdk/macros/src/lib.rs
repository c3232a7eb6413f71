//! Procedural macros of `airlock-sdk`. Use them through `airlock-sdk`
//! (`airlock_sdk::generate!`), which re-exports what they expand to.

use proc_macro::{Delimiter, TokenStream, TokenTree};
use std::path::PathBuf;

/// Embed the doc comments of an action's WIT package in the component, as
/// the `package-docs` custom section wit-component defines (a version byte,
/// then JSON), so hosts can describe the action's functions, parameters,
/// types, fields and cases without the WIT files.
///
/// Reads the `path` (a string or a list of strings; `wit` by default,
/// relative to the crate), `inline` and `world` options of
/// `wit_bindgen::generate!`, and ignores the others.
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
    let mut resolve = wit_parser::Resolve::default();
    let mut packages = Vec::new();
    let mut files = Vec::new();
    let paths = if options.paths.is_empty() && options.inline.is_none() {
        vec!["wit".to_string()]
    } else {
        options.paths.clone()
    };
    for p in &paths {
        let path = root.join(p);
        let (package, sources) = resolve
            .push_path(&path)
            .map_err(|e| format!("cannot read the WIT at {}: {e:#}", path.display()))?;
        packages.push(package);
        files.extend(sources.paths().map(|p| p.display().to_string()));
    }
    if let Some(text) = &options.inline {
        let package = resolve
            .push_str("inline.wit", text)
            .map_err(|e| format!("cannot read the inline WIT: {e:#}"))?;
        packages.push(package);
    }
    let world = resolve
        .select_world(&packages, options.world.as_deref())
        .map_err(|e| format!("{e:#}"))?;
    let package = resolve.worlds[world]
        .package
        .ok_or("the selected world belongs to no package")?;
    let bytes = wit_parser::PackageMetadata::extract(&resolve, package)
        .encode()
        .map_err(|e| format!("cannot encode the WIT docs: {e:#}"))?;
    let mut out = String::new();
    // Rebuild when a WIT file changes.
    for file in files {
        out.push_str(&format!("const _: &[u8] = include_bytes!({file:?});\n"));
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
    paths: Vec<String>,
    inline: Option<String>,
    world: Option<String>,
}

impl Options {
    /// Read `path`, `inline` and `world` out of `{ ... }`.
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
            match key.to_string().as_str() {
                "path" => match value {
                    TokenTree::Literal(l) => options.paths.push(string_literal(&l.to_string(), "path")?),
                    TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => {
                        for t in g.stream() {
                            if let TokenTree::Literal(l) = t {
                                options.paths.push(string_literal(&l.to_string(), "path")?);
                            }
                        }
                    }
                    _ => return Err("`path` must be a string or a list of strings".into()),
                },
                "inline" => match value {
                    TokenTree::Literal(l) => options.inline = Some(string_literal(&l.to_string(), "inline")?),
                    _ => return Err("`inline` must be a string".into()),
                },
                "world" => match value {
                    TokenTree::Literal(l) => options.world = Some(string_literal(&l.to_string(), "world")?),
                    _ => return Err("`world` must be a string".into()),
                },
                _ => {}
            }
        }
        Ok(options)
    }
}

/// The value of a string literal, escapes and raw strings included.
fn string_literal(text: &str, key: &str) -> Result<String, String> {
    syn::parse_str::<syn::LitStr>(text)
        .map(|l| l.value())
        .map_err(|_| format!("`{key}` must be a string literal"))
}
