//! pool_decode: the body of a pooling request (embeddings, pooling, classify, score,
//! rerank) → a validated `PoolJob`, through `crate::api::validate`; a bad body is
//! answered here with the validator's 400.

use std::sync::Arc;

use crate::api::context::ServingContext;
use crate::api::validate::pooling_request;
use crate::model::encoder::PoolingInfo;
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};

pub struct PoolDecode {
    pub serving: Arc<ServingContext>,
    pub model: Arc<PoolingInfo>,
}

impl Stage<Item> for PoolDecode {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Body(body) = item.payload else { unreachable!("pool_decode takes request bodies") };
        match pooling_request(item.ctx.endpoint, &body, &self.serving, &self.model) {
            Ok(job) => {
                let _ = out.send(Item { ctx: item.ctx, payload: Payload::Pool(Box::new(job)) });
            }
            Err(e) => item.ctx.fail(e),
        }
    }
}
