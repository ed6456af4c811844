//! The console's words, one catalogue per language (`en.txt`, `zh.txt`: `key = text`
//! lines), and how a browser's language is chosen: the `lang` cookie the switch sets, else
//! the first of `Accept-Language` that the console speaks, else English. A test checks that
//! both catalogues have the same keys and that every key a template uses is in them.

use std::collections::HashMap;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Zh];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The `lang` attribute of a page.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.code() == code)
    }

    /// The browser's choice: `cookie` (the switch's) if it names a language, else the most
    /// preferred of `accept_language` that the console has, else English.
    pub fn choose(cookie: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(lang) = cookie.and_then(Lang::parse) {
            return lang;
        }
        let mut offered: Vec<(f32, usize, Lang)> = Vec::new();
        for (i, part) in accept_language.unwrap_or_default().split(',').enumerate() {
            let mut pieces = part.split(';');
            let tag = pieces
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let q = pieces
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or_default();
            if let Some(lang) = Lang::parse(primary)
                && q > 0.0
            {
                offered.push((q, i, lang));
            }
        }
        offered.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        offered.first().map_or(Lang::En, |o| o.2)
    }

    pub fn words(self) -> &'static Words {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

/// One language's catalogue.
pub struct Words {
    lang: Lang,
    texts: HashMap<&'static str, &'static str>,
}

impl Words {
    /// The text of `key` (the key itself if the catalogue lacks it, which a test forbids).
    pub fn get<'k>(&self, key: &'k str) -> &'k str {
        self.texts.get(key).copied().unwrap_or(key)
    }

    pub fn lang(&self) -> Lang {
        self.lang
    }

    #[cfg(test)]
    fn keys(&self) -> impl Iterator<Item = &&'static str> {
        self.texts.keys()
    }
}

fn parse(lang: Lang, text: &'static str) -> Words {
    let texts = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    Words { lang, texts }
}

static EN: LazyLock<Words> = LazyLock::new(|| parse(Lang::En, include_str!("en.txt")));
static ZH: LazyLock<Words> = LazyLock::new(|| parse(Lang::Zh, include_str!("zh.txt")));

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn both_catalogues_have_the_same_keys_and_no_empty_text() {
        let en: BTreeSet<_> = EN.keys().collect();
        let zh: BTreeSet<_> = ZH.keys().collect();
        assert_eq!(
            en.difference(&zh).collect::<Vec<_>>(),
            Vec::<&&&str>::new(),
            "in en.txt only"
        );
        assert_eq!(
            zh.difference(&en).collect::<Vec<_>>(),
            Vec::<&&&str>::new(),
            "in zh.txt only"
        );
        for words in [&*EN, &*ZH] {
            for key in words.keys() {
                assert!(!words.get(key).is_empty(), "{key} is empty");
            }
        }
    }

    #[test]
    fn every_key_the_templates_and_pages_use_is_in_the_catalogues() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/console");
        let mut used = BTreeSet::new();
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (i, _) in text.match_indices("t.get(\"") {
                let rest = &text[i + 7..];
                used.insert(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
        assert!(used.len() > 20, "found {} keys", used.len());
        let missing: Vec<_> = used
            .iter()
            .filter(|k| !EN.texts.contains_key(k.as_str()))
            .collect();
        assert!(missing.is_empty(), "not in the catalogues: {missing:?}");
    }

    #[test]
    fn the_language_comes_from_the_cookie_then_accept_language() {
        assert_eq!(Lang::choose(Some("zh"), Some("en")), Lang::Zh);
        assert_eq!(Lang::choose(Some("fr"), Some("zh-CN,zh;q=0.9")), Lang::Zh);
        assert_eq!(
            Lang::choose(None, Some("fr-FR,en;q=0.5,zh;q=0.8")),
            Lang::Zh
        );
        assert_eq!(Lang::choose(None, Some("en-US,zh;q=0.8")), Lang::En);
        assert_eq!(Lang::choose(None, Some("zh;q=0")), Lang::En);
        assert_eq!(Lang::choose(None, None), Lang::En);
    }
}
