"""my-service schemas: operation parameters and REST payloads."""

import marshmallow as ma


class CountParams(ma.Schema):
    """Parameters of the count Task."""

    to = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1, max=1000))


class HelloSchema(ma.Schema):
    """A greeting."""

    message = ma.fields.String(required=True)
    node = ma.fields.String(required=True)
