//! The embedded broker: this node's shards are the whole system.

use crate::bus::ShardRouter;
use crate::bus::{BoxFuture, Broker};
use crate::publish::{Batch, PublishError};

pub struct MemoryBroker {
    router: ShardRouter,
}

impl MemoryBroker {
    pub fn new(router: ShardRouter) -> Self {
        MemoryBroker { router }
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish_frames(&self, batch: Batch) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move { self.router.dispatch(batch).await.map_err(|_| PublishError::Unavailable) })
    }
}
