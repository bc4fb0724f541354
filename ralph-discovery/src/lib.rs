//! ralph-discovery
