"""Node agents on a Ray cluster: the actor (``agent``), its ``NodeApi`` client (``client``) and
the control plane's side that starts an agent on each Ray node and notices joins (``nodes``).
Ray is an optional dependency (``pip install slfaas[ray]``); nothing else imports this package."""
