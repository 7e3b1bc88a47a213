//! Small parse functions for property values (owned by the config work).
