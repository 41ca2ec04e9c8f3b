//! guide: where structured-output constraints are compiled into token automata before a
//! request reaches the engine. No constraint kind is accepted yet (decode rejects them),
//! so jobs pass through unchanged.

use crate::job::Item;
use crate::pipeline::{Outlet, Stage};

pub struct Guide;

impl Stage<Item> for Guide {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let _ = out.send(item);
    }
}
