"""Several nodes behind one control plane: ``NodeSet`` is one ``NodeApi`` over many node
handles (in this process, or Ray actors), placing each request with ``policy.cluster_placement``."""
