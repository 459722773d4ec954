//! The result sink: writes every envelope it receives, from any input, as one JSON line (the
//! envelope's fields plus `input`, and `meta` when the message carried dora metadata
//! parameters besides the schema, e.g. a script's version) to MOFA_OUT (a file, created anew; default stdout). With
//! MOFA_EXPECT=N it ends after N outcomes: a `result`, or an `error`, which also ends its task.

use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use mofa_kernel::config::{self, ConfigError};
use mofa_kernel::node::{Ctx, Failure, Handler, Meta};
use mofa_kernel::{Envelope, Kind};

pub struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
    expect: Option<u64>,
    seen: Mutex<u64>,
}

impl Sink {
    pub fn new(out: Box<dyn Write + Send>, expect: Option<u64>) -> Self {
        Sink {
            out: Mutex::new(out),
            expect,
            seen: Mutex::new(0),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let out: Box<dyn Write + Send> = match config::optional("MOFA_OUT") {
            None => Box::new(std::io::stdout()),
            Some(path) => Box::new(
                std::fs::File::create(&path)
                    .map_err(|e| ConfigError::invalid("MOFA_OUT", path, e))?,
            ),
        };
        let expect = config::optional("MOFA_EXPECT")
            .map(|_| config::parse_or("MOFA_EXPECT", 0u64))
            .transpose()?;
        Ok(Sink::new(out, expect))
    }
}

#[async_trait]
impl Handler for Sink {
    async fn on_message(&self, ctx: &Ctx, input: &str, msg: Envelope) -> Result<(), Failure> {
        self.on_message_meta(ctx, input, msg, &Meta::new()).await
    }

    async fn on_message_meta(
        &self,
        ctx: &Ctx,
        input: &str,
        msg: Envelope,
        meta: &Meta,
    ) -> Result<(), Failure> {
        let mut line = serde_json::to_value(&msg)?;
        line["input"] = input.into();
        if !meta.is_empty() {
            line["meta"] = serde_json::to_value(meta)?;
        }
        {
            let mut out = self.out.lock().expect("sink output");
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        if matches!(msg.kind, Kind::Result | Kind::Error) {
            let mut seen = self.seen.lock().expect("sink count");
            *seen += 1;
            if self.expect.is_some_and(|n| *seen >= n) {
                tracing::info!("got the {} expected outcomes, ending", *seen);
                ctx.exit();
            }
        }
        Ok(())
    }
}
