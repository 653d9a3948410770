"""Data: joined feedback -> preference pairs, thumbs labels, labeler consensus, and each
user's training and held-out examples."""
