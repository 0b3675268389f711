"""Sensor and actuator drivers, found through the entry-point group pyedge.drivers."""
