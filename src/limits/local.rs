//! Rate limits counted in this process: GCRA per key for rpm (`requests`), token buckets
//! for tpm (`tokens`). The limit store of a single gateway, and the fallback of the Redis
//! store while Redis does not answer.

use super::{Counted, RequestLimits, TokenLimits};

#[derive(Default)]
pub struct LocalCounts {
    requests: RequestLimits,
    tokens: TokenLimits,
}

impl LocalCounts {
    /// Counts one request of key `id` against `rpm`, and if that passes and the key has a
    /// `tpm`, reserves `reserve` tokens.
    pub fn admit(&self, id: i64, rpm: u32, tpm: Option<u64>, reserve: u64) -> Counted {
        let requests = self.requests.check(id, rpm);
        let tokens = match (requests.retry_after, tpm) {
            (None, Some(tpm)) => Some(self.tokens.reserve(id, tpm, reserve)),
            _ => None,
        };
        Counted { requests, tokens }
    }

    pub fn settle(&self, id: i64, tpm: u64, reserved: u64, used: u64) {
        self.tokens.settle(id, tpm, reserved, used);
    }

    pub fn peek(&self, id: i64, rpm: u32, tpm: Option<u64>) -> Counted {
        Counted {
            requests: self.requests.peek(id, rpm),
            tokens: tpm.map(|tpm| self.tokens.peek(id, tpm)),
        }
    }

    pub fn sweep(&self) {
        self.requests.sweep();
        self.tokens.sweep();
    }
}
