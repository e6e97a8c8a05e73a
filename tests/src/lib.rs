//! see lib
