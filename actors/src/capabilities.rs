//! What a request needs of a model (image, PDF or audio input, tools), checked against the
//! catalog's `supports` before any provider is called.

use crate::catalog::Supports;
use crate::structured::{StructuredSpec, Target};
use crate::wire::{ChatRequest, ContentPart, MessageContent};

/// The capabilities a request needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub images: bool,
    pub pdf: bool,
    pub audio: bool,
    pub tools: bool,
}

impl Needs {
    pub fn of(request: &ChatRequest) -> Needs {
        // A single forced tool is a structured output: models without tools answer it in
        // JSON or text mode.
        let forced_schema = matches!(
            StructuredSpec::of(request),
            Some(StructuredSpec {
                target: Target::Tool(_),
                ..
            })
        );
        let mut needs = Needs {
            tools: !forced_schema && request.tools.as_ref().is_some_and(|t| !t.is_empty()),
            ..Needs::default()
        };
        for message in &request.messages {
            if let Some(MessageContent::Parts(parts)) = &message.content {
                for part in parts {
                    match part {
                        ContentPart::ImageUrl { .. } => needs.images = true,
                        ContentPart::File { .. } => needs.pdf = true,
                        ContentPart::InputAudio { .. } => needs.audio = true,
                        ContentPart::Text { .. } | ContentPart::Refusal { .. } => {}
                    }
                }
            }
        }
        needs
    }

    /// The first need the model lacks, named for an error message.
    pub fn missing(&self, supports: &Supports) -> Option<&'static str> {
        if self.images && !supports.images {
            Some("image input")
        } else if self.pdf && !supports.pdf {
            Some("PDF (file) input")
        } else if self.audio && !supports.audio {
            Some("audio input")
        } else if self.tools && !supports.tools {
            Some("tools")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_parts() {
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"}}
            ]}]
        }))
        .unwrap();
        let needs = Needs::of(&request);
        assert!(needs.pdf && !needs.images && !needs.tools);
        let text_only = Supports {
            images: true,
            ..Supports::default()
        };
        assert_eq!(needs.missing(&text_only), Some("PDF (file) input"));
        let with_pdf = Supports {
            pdf: true,
            ..Supports::default()
        };
        assert_eq!(needs.missing(&with_pdf), None);
    }
}
