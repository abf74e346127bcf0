//! HTTP virtuals (in progress): for now the persistence primitives they
//! will route with, ready and tested on their own.

pub mod persistence;
