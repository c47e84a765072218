"""Command-line tools that speak MoQT as ordinary peers: a synthetic publisher and a checking subscriber."""
