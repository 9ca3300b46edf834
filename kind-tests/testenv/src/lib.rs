//! Real test components.
