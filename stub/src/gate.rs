//! A gate that holds requests back while closed: a request that arrives then answers only once
//! it opens, so a test can make many calls (or webhook deliveries) end at the same moment.

use std::sync::Arc;

/// Open unless a test closes it; clones share one gate.
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(true)))
    }
}

impl Gate {
    pub fn close(&self) {
        self.0.send_replace(false);
    }

    /// Lets every request held at the gate through, all at once.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        !*self.0.borrow()
    }

    /// Waits for the gate to open if it is closed now.
    pub async fn pass(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as the gate, so this only ends when it opens.
        let _ = open.wait_for(|open| *open).await;
    }
}
