"""The API's data access, one module per resource: lookups, queries and writes.

Routes parse and validate the request, call these functions and serialize what they return
(``api.serializers``); no route builds a query. Everything here is synchronous (SQLAlchemy
sessions, the object store), so async routes call it through the thread pool. Every lookup
filters by tenant, so an id of another tenant is indistinguishable from an unknown one (404).
"""
