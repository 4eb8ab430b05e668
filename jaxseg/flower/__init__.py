"""A real federation over Flower (``pip install -e '.[flower]'``, docs/flower.md):
``app`` (the ServerApp and ClientApp over the simulation's round), ``deploy``
(``jaxseg flower``: SuperLink, SuperNodes, keys, runs), ``gateway`` (the sites'
Fleet-only door). Nothing here is imported unless a Flower command runs."""
