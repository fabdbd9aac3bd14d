"""``dispatcher top``: the operator's live status screen."""
