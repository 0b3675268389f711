"""The Docker Engine API gateway: Docker tools manage the device through PyEdge.

A listener of the container-manager (off by default) that answers the Docker Engine API
for what Docker tools need, under PyEdge's authentication, roles, policy and audit log:
`routes.py` (what is relayed, with which role), `create.py` (the policy on Docker's own
create bodies), `certs.py` (client certificates), `app.py` (the WSGI app), `server.py`
(the listener), `views.py` (the certificates' REST API).
"""
