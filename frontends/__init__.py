"""Frontends: each lowers one kind of model into the lrpir IR."""
