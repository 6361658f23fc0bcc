//! Chat templates: the Jinja template that a checkpoint ships
//! (`tokenizer.chat_template` in a GGUF file, `chat_template` in a
//! `tokenizer_config.json`), rendered as `transformers`'
//! `apply_chat_template` renders it.
//!
//! Rendering uses the `minijinja` crate with the settings `transformers`
//! uses: `trim_blocks` and `lstrip_blocks`, loop controls, `tojson`,
//! Python's string and dict methods (`.strip()`, `.items()`, …, through
//! `minijinja-contrib`'s `pycompat`), and a `raise_exception(msg)`
//! function whose message becomes a [`PretrainedError::Template`]. The
//! template sees `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`.
//!
//! ```
//! use firebrand_pretrained::chat::{ChatMessage, ChatTemplate};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     "example",
//! );
//! let text = t.apply(&[ChatMessage::user(" Hi! ")], true).unwrap();
//! assert_eq!(text, "<|user|>Hi!\n<|assistant|>");
//! ```

use crate::gguf::{GgufFile, MetaValue};
use crate::hub::read_json;
use crate::{PretrainedError, Result};
use minijinja::{Environment, ErrorKind, Value, syntax::SyntaxConfig};
use std::collections::BTreeMap;
use std::path::Path;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A turn with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    /// A `system` turn.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }

    /// A `user` turn.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }

    /// An `assistant` turn.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

/// A checkpoint's chat template, with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    origin: String,
    /// The text of the beginning-of-sequence token (`bos_token`), if known.
    pub bos_token: String,
    /// The text of the end-of-sequence token (`eos_token`), if known.
    pub eos_token: String,
}

impl ChatTemplate {
    /// A template from its Jinja source; `origin` names it in errors.
    pub fn new(source: impl Into<String>, origin: impl Into<String>) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            origin: origin.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        }
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with its BOS
    /// and EOS tokens' text; `None` when the file has none.
    pub fn from_gguf(g: &GgufFile) -> Option<ChatTemplate> {
        let source = g.chat_template()?;
        let tokens = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array);
        let token = |key: &str| -> String {
            let id = g.get(key).and_then(MetaValue::as_u64);
            match (tokens, id) {
                (Some(t), Some(id)) => t.get(id as usize).and_then(MetaValue::as_str).unwrap_or("").to_string(),
                _ => String::new(),
            }
        };
        Some(ChatTemplate {
            source: source.to_string(),
            origin: format!("{} (tokenizer.chat_template)", g.path().display()),
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
        })
    }

    /// The template of a Hugging Face folder's `tokenizer_config.json`
    /// (`chat_template`: a string, or a list of named templates of which
    /// `default` is taken), with its `bos_token` and `eos_token` (strings, or
    /// objects with a `content`); `Ok(None)` when the config has no template.
    ///
    /// # Errors
    /// A missing or unparsable `tokenizer_config.json`, or a `chat_template`
    /// that is neither form, naming the file.
    pub fn from_tokenizer_config(dir: &Path) -> Result<Option<ChatTemplate>> {
        let path = dir.join("tokenizer_config.json");
        let json = read_json(&path)?;
        let bad =
            |msg: &str| PretrainedError::Config { path: path.clone(), field: "chat_template".into(), msg: msg.into() };
        let source = match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .ok_or_else(|| bad("is a list without a \"default\" template"))?
                .to_string(),
            Some(_) => return Err(bad("must be a string or a list of {name, template}")),
        };
        let token = |key: &str| -> String {
            match json.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string(),
                None => String::new(),
            }
        };
        Ok(Some(ChatTemplate {
            source,
            origin: format!("{} (chat_template)", path.display()),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        }))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`, ending with the assistant's opening when
    /// `add_generation_prompt` (what a model continues from).
    ///
    /// # Errors
    /// [`PretrainedError::Template`] naming the template's origin: a syntax
    /// error, an undefined function or filter, or the template's own
    /// `raise_exception` (e.g. roles that do not alternate).
    pub fn apply(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let err = |e: minijinja::Error| {
            let mut msg = e.to_string();
            if let Some(d) = e.detail().filter(|d| !msg.contains(d)) {
                msg = format!("{msg}: {d}");
            }
            PretrainedError::Template { origin: self.origin.clone(), msg }
        };
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(err)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {msg}")))
        });
        let template = env.template_from_str(&self.source).map_err(err)?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut o = BTreeMap::new();
                o.insert("role", Value::from(m.role.as_str()));
                o.insert("content", Value::from(m.content.as_str()));
                Value::from(o)
            })
            .collect();
        let mut ctx = BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("bos_token", Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token", Value::from(self.eos_token.as_str()));
        template.render(Value::from(ctx)).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
        {{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + \
        message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
        {{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_a_default_system_turn() {
        let t = ChatTemplate::new(CHATML, "test");
        let got = t.apply(&[ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let got = t.apply(&[ChatMessage::system("S"), ChatMessage::user("Hi")], false).unwrap();
        assert_eq!(got, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn blocks_trim_like_transformers_and_python_methods_work() {
        // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before one.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]\n    {% endif %}\n{% endfor %}{{ bos_token }}";
        let mut t = ChatTemplate::new(src, "test");
        t.bos_token = "<s>".into();
        assert_eq!(t.apply(&[ChatMessage::user("  a b  "), ChatMessage::assistant("x")], false).unwrap(), "[A B]\n<s>");
    }

    #[test]
    fn a_tokenizer_config_gives_its_template_and_tokens() {
        let dir = std::env::temp_dir().join(format!("fb-chat-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |v: serde_json::Value| std::fs::write(dir.join("tokenizer_config.json"), v.to_string()).unwrap();
        write(serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}],
            "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"
        }));
        let t = ChatTemplate::from_tokenizer_config(&dir).unwrap().unwrap();
        assert_eq!(t.apply(&[ChatMessage::user("hi")], false).unwrap(), "<s>hi</s>");
        write(serde_json::json!({"bos_token": "<s>"}));
        assert!(ChatTemplate::from_tokenizer_config(&dir).unwrap().is_none());
        write(serde_json::json!({"chat_template": 3}));
        let e = ChatTemplate::from_tokenizer_config(&dir).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json") && e.contains("chat_template"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = ChatTemplate::from_tokenizer_config(&dir).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json"), "{e}");
    }

    #[test]
    fn raise_exception_and_syntax_errors_name_the_template() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}";
        let e = ChatTemplate::new(src, "model.gguf (tokenizer.chat_template)")
            .apply(&[ChatMessage::assistant("x")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.gguf") && e.contains("roles must start with user"), "{e}");
        let e = ChatTemplate::new("{% for %}", "cfg").apply(&[], true).unwrap_err().to_string();
        assert!(e.contains("cfg") && e.contains("syntax"), "{e}");
    }
}
