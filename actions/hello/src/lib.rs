//! `hello`: a pure action. It imports no capability, so it needs no grant.

airlock_sdk::generate!({ path: "wit", world: "hello" });

struct Hello;

impl Guest for Hello {
    fn greet(who: Person) -> Greeting {
        let (language, word) = who
            .languages
            .iter()
            .find_map(|l| match l.as_str() {
                "fr" => Some(("fr", "Bonjour")),
                "de" => Some(("de", "Hallo")),
                "es" => Some(("es", "Hola")),
                "en" => Some(("en", "Hello")),
                _ => None,
            })
            .unwrap_or(("en", "Hello"));
        let name = match who.title {
            Some(title) => format!("{title} {}", who.name),
            None => who.name,
        };
        let text = format!("{word}, {name}!");
        Greeting {
            length: text.chars().count() as u32,
            text,
            language: language.to_string(),
        }
    }
}

export!(Hello);
