"""Generated wire types (see protos/)."""
