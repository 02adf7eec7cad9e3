"""Pictures of matches and features (PIL only; no display needed)."""

from semcorr.viz.matches import match_picture, save_match_picture

__all__ = ["match_picture", "save_match_picture"]
