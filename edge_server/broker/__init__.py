"""The MQTT broker: the embedded Mosquitto, its accounts and ACL, the bundle's `pyedge broker`."""
