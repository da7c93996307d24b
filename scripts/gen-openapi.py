#!/usr/bin/env python3
"""Writes docs/openapi.json: the cyclades-api document (OpenAPI 3.0).
Tests/CycladesAPITests checks it against the router in both directions."""
import json, os

S = lambda t, **k: dict(type=t, **k)
ref = lambda n: {"$ref": f"#/components/schemas/{n}"}
nstr = {"type": "string", "nullable": True}
link = S("object", properties={"rel": S("string"), "href": S("string")})
links = S("array", items=link)
schemas = {
    "Fault": S("object", description="OpenStack fault: one key (badRequest, unauthorized, itemNotFound, buildInProgress, overLimit, "
               "requestEntityTooLarge, notImplemented, serviceUnavailable, computeFault) holding code and message.",
               minProperties=1, maxProperties=1,
               additionalProperties=S("object", required=["code", "message"], properties={"code": S("integer"), "message": S("string"), "details": S("string")})),
    "VersionList": S("object", required=["versions"], properties={"versions": S("array", items=ref("Version"))}),
    "VersionOne": S("object", required=["version"], properties={"version": ref("Version")}),
    "Version": S("object", required=["id", "status", "links"], properties={"id": S("string"), "status": S("string"), "version": S("string"),
                 "min_version": S("string"), "updated": S("string"), "links": links}),
    "GlanceImage": S("object", description="Glance v2's flat image",
                     required=["id", "name", "status", "visibility", "size", "min_disk", "disk_format", "container_format"],
                     properties={"id": S("string"), "name": S("string"), "status": S("string"), "visibility": S("string"), "owner": S("string"),
                                 "size": S("integer"), "min_disk": S("integer"), "min_ram": S("integer"), "disk_format": S("string"),
                                 "container_format": S("string"), "checksum": nstr, "protected": S("boolean"), "tags": S("array", items=S("string")),
                                 "created_at": S("string"), "updated_at": S("string"), "self": S("string"), "file": S("string"),
                                 "schema": S("string"), "SNF:location": S("string")}),
    "VolumeSummary": S("object", required=["id", "links"], properties={"id": S("string"), "name": nstr, "display_name": nstr, "links": links}),
    "Attachment": S("object", required=["attachment_id", "id", "server_id", "volume_id", "device", "device_index"],
                    properties={"attachment_id": S("string"), "id": S("string"), "server_id": S("string"), "volume_id": S("string"),
                                "device": S("string"), "device_index": S("integer", nullable=True), "host_name": nstr, "attached_at": S("string")}),
    "Volume": S("object", required=["id", "name", "display_name", "description", "display_description", "size", "status", "volume_type",
                                    "attachments", "metadata", "bootable", "source_volid", "snapshot_id", "image_id", "created_at",
                                    "user_id", "tenant_id", "links", "delete_on_termination"],
                properties={"id": S("string"), "name": nstr, "display_name": nstr, "description": nstr, "display_description": nstr,
                            "size": S("integer", description="GB"),
                            "status": S("string", enum=["creating", "in-use", "available", "deleting", "deleted", "error", "error_deleting", "extending", "attaching", "detaching"]),
                            "volume_type": nstr, "volume_type_id": S("string"), "SNF:disk_template": nstr,
                            "attachments": S("array", items=ref("Attachment")),
                            "metadata": S("object", additionalProperties=S("string")), "bootable": S("string", enum=["true", "false"]),
                            "source_volid": nstr, "snapshot_id": nstr, "image_id": nstr, "created_at": S("string"), "updated_at": S("string"),
                            "user_id": S("string"), "tenant_id": S("string"), "links": links, "delete_on_termination": S("boolean"),
                            "deleted": S("boolean"), "server_id": nstr, "device_index": S("integer", nullable=True)}),
    "VolumeCreate": S("object", required=["volume"], properties={
        "volume": S("object", properties={
            "size": {"description": "GB (a whole number, or a string of digits); optional with snapshot_id, imageRef or source_volid",
                     "oneOf": [S("integer"), S("string")], "nullable": True},
            "server_id": {"oneOf": [S("integer"), S("string")], "nullable": True, "description": "here or as the scheduler hint; without one the volume is created available (no server; Ganeti 3.1)"},
            "name": nstr, "display_name": nstr, "description": nstr, "display_description": nstr,
            "volume_type": {"oneOf": [S("integer"), S("string")], "nullable": True},
            "imageRef": nstr, "snapshot_id": nstr,
            "source_volid": dict(nstr, description="clone this volume of the user's (in-use or available; 404 for another user's, 400 in another status); "
                                                   "O(1) in the store, for types whose provider clones"),
            "metadata": S("object", additionalProperties=S("string"), nullable=True)}),
        "OS-SCH-HNT:scheduler_hints": S("object", properties={"server_id": {"oneOf": [S("integer"), S("string")]}})}),
    "VolumeUpdate": S("object", required=["volume"], properties={"volume": S("object", properties={
        "name": nstr, "display_name": nstr, "description": nstr, "display_description": nstr, "delete_on_termination": S("boolean")})}),
    "Metadata": S("object", required=["metadata"], properties={"metadata": S("object", additionalProperties=S("string"))}),
    "VolumeAction": S("object", description="one action; os-extend grows the volume through Ganeti",
                      properties={"os-extend": S("object", required=["new_size"], properties={"new_size": {"oneOf": [S("integer"), S("string")]}})}),
    "VolumeType": S("object", required=["id", "name"], properties={"id": S("string"), "name": S("string"), "description": nstr,
                    "is_public": S("boolean"), "deleted": S("boolean"), "extra_specs": S("object"), "SNF:disk_template": S("string")}),
    "Snapshot": S("object", required=["id", "name", "links"], properties={"id": S("string"), "name": S("string"), "display_name": S("string"),
                  "description": nstr, "display_description": nstr, "volume_id": nstr, "size": S("integer"), "status": S("string"),
                  "progress": S("string"), "created_at": S("string"), "updated_at": S("string"), "metadata": S("object"), "links": links}),
    "SnapshotCreate": S("object", required=["snapshot"], properties={"snapshot": S("object", required=["volume_id"], properties={
        "volume_id": {"oneOf": [S("integer"), S("string")]}, "name": nstr, "display_name": nstr, "description": nstr,
        "force": S("boolean"), "metadata": S("object", additionalProperties=S("string"))})}),
    "BlockDevice": S("object", required=["source_type"], properties={
        "source_type": S("string", enum=["image", "snapshot", "blank", "volume"]), "uuid": S("string"),
        "volume_size": {"oneOf": [S("integer"), S("string")]}, "delete_on_termination": {"oneOf": [S("boolean"), S("string")]},
        "boot_index": {"oneOf": [S("integer"), S("string")]}, "destination_type": S("string")}),
    "ServerCreate": S("object", required=["server"], properties={"server": S("object", required=["name", "flavorRef"], properties={
        "name": S("string"), "flavorRef": {"oneOf": [S("integer"), S("string")]}, "imageRef": S("string"),
        "block_device_mapping_v2": S("array", items=ref("BlockDevice"), description="element 0 is the root volume and is never blank; "
                                     "source_type volume (not element 0): an available volume of the user's, attached once the server is built (Ganeti 3.1)")})}),
    "Server": S("object", required=["id", "name", "links"], properties={"id": S("string"), "name": S("string"), "status": S("string"),
                "links": links, "image": {}, "flavor": S("object"), "metadata": S("object"), "volumes": S("array", items=S("integer")),
                "os-extended-volumes:volumes_attached": S("array", items=S("object"))}),
    "VolumeAttachment": S("object", required=["id", "volumeId", "serverId", "device"], properties={
        "id": S("string"), "volumeId": S("string"), "serverId": S("string"), "device": S("string"), "delete_on_termination": S("boolean")}),
    "VolumeAttachmentCreate": S("object", required=["volumeAttachment"], properties={"volumeAttachment": S("object", required=["volumeId"], properties={
        "volumeId": {"oneOf": [S("integer"), S("string")]}, "device": nstr, "delete_on_termination": S("boolean")})}),
    "Flavor": S("object", required=["id", "name", "links"], properties={"id": S("string"), "name": S("string"), "ram": S("integer"),
                "disk": S("integer"), "vcpus": S("integer"), "links": links}),
    "Image": S("object", required=["id", "name", "links"], properties={"id": S("string"), "name": S("string"), "links": links,
               "status": S("string"), "minDisk": S("integer")}),
}
wrap = lambda key, item: S("object", required=[key], properties={key: item})
lst = lambda key, item: S("object", required=[key], properties={key: S("array", items=item)})
js = lambda schema: {"content": {"application/json": {"schema": schema}}}
fault = js(ref("Fault"))
ERR_READ = {"400": "bad request", "401": "no or bad X-Auth-Token", "404": "no such object (or another user's)"}
ERR_WRITE = dict(ERR_READ, **{"409": "a job is in progress (buildInProgress)", "413": "quota exceeded (overLimit) or body over 1 MiB",
                              "501": "not implemented", "503": "Ganeti or the store failed"})

def op(summary, ok, schema=None, body=None, auth=True, errors=None, params=()):
    o = {"summary": summary, "responses": {}}
    o["responses"][str(ok)] = dict({"description": "success"}, **(js(schema) if schema else {}))
    if auth:
        o["security"] = [{"token": []}]
        for code, d in (errors or ERR_READ).items():
            o["responses"][code] = dict({"description": d}, **fault)
    else:
        o["security"] = []
    if body:
        o["requestBody"] = dict({"required": True}, **js(ref(body)))
    if params:
        o["parameters"] = [{"name": n, "in": "path", "required": True, "schema": S("string")} for n in params]
    return o

listq = [{"name": n, "in": "query", "required": False, "schema": S("string")} for n in ["limit", "marker", "changes-since", "name", "status"]]
paths = {}
def add(path, method, o, query=False):
    if query: o["parameters"] = o.get("parameters", []) + listq
    paths.setdefault(path, {})[method] = o

add("/volume", "get", op("Volume API versions", 200, ref("VersionList"), auth=False))
for p in ["/volume/v3", "/volume/v2.0"]:
    add(p, "get", op("Volume API versions", 200, ref("VersionList"), auth=False))
    add(f"{p}/volumes", "get", op("List volumes", 200, lst("volumes", ref("VolumeSummary"))), query=True)
    add(f"{p}/volumes", "post", op("Create a volume on a server or without one, blank or from imageRef, snapshot_id or source_volid (202, the volume in creating)", 202, wrap("volume", ref("Volume")), "VolumeCreate", errors=ERR_WRITE))
    add(f"{p}/volumes/detail", "get", op("List volumes in detail", 200, lst("volumes", ref("Volume"))), query=True)
    v = ("volume_id",)
    add(f"{p}/volumes/{{volume_id}}", "get", op("Show a volume (deleted ones too)", 200, wrap("volume", ref("Volume")), params=v))
    add(f"{p}/volumes/{{volume_id}}", "put", op("Update name, description", 200, wrap("volume", ref("Volume")), "VolumeUpdate", params=v, errors=ERR_WRITE))
    add(f"{p}/volumes/{{volume_id}}", "delete", op("Delete the volume, on its server or available (202; 409 on a running server without disk hotplug)", 202, params=v, errors=ERR_WRITE))
    add(f"{p}/volumes/{{volume_id}}/metadata", "get", op("Volume metadata", 200, ref("Metadata"), params=v))
    add(f"{p}/volumes/{{volume_id}}/metadata", "post", op("Merge metadata (at most 10 keys)", 200, ref("Metadata"), "Metadata", params=v, errors=ERR_WRITE))
    add(f"{p}/volumes/{{volume_id}}/metadata", "put", op("Replace metadata", 200, ref("Metadata"), "Metadata", params=v, errors=ERR_WRITE))
    add(f"{p}/volumes/{{volume_id}}/metadata/{{key}}", "delete", op("Remove a metadata key", 200, params=("volume_id", "key"), errors=ERR_WRITE))
    add(f"{p}/volumes/{{volume_id}}/action", "post", op("os-extend (grow through Ganeti, 202); other actions 400", 202, None, "VolumeAction", params=v, errors=ERR_WRITE))
    add(f"{p}/types", "get", op("List volume types", 200, lst("volume_types", ref("VolumeType"))))
    add(f"{p}/types/{{type_id}}", "get", op("Show a volume type (id or name)", 200, wrap("volume_type", ref("VolumeType")), params=("type_id",)))
    add(f"{p}/snapshots", "get", op("List snapshots", 200, lst("snapshots", ref("Snapshot"))), query=True)
    add(f"{p}/snapshots", "post", op("Snapshot an in-use volume in the store (O(1))", 202, wrap("snapshot", ref("Snapshot")), "SnapshotCreate", errors=ERR_WRITE))
    add(f"{p}/snapshots/detail", "get", op("List snapshots in detail", 200, lst("snapshots", ref("Snapshot"))), query=True)
    add(f"{p}/snapshots/{{snapshot_id}}", "get", op("Show a snapshot", 200, wrap("snapshot", ref("Snapshot")), params=("snapshot_id",)))
    add(f"{p}/snapshots/{{snapshot_id}}", "delete", op("Remove a snapshot (409 while volumes are cloned from it)", 202, params=("snapshot_id",), errors=ERR_WRITE))

add("/compute", "get", op("Compute API versions", 200, ref("VersionList"), auth=False))
for p in ["/compute/v2.1", "/compute/v2.0"]:
    add(p, "get", op("This compute API version", 200, ref("VersionOne"), auth=False))
    add(f"{p}/servers", "get", op("List servers", 200, lst("servers", ref("Server"))), query=True)
    add(f"{p}/servers", "post", op("Create a server with block_device_mapping_v2 (202)", 202, wrap("server", ref("Server")), "ServerCreate", errors=ERR_WRITE))
    add(f"{p}/servers/detail", "get", op("List servers in detail", 200, lst("servers", ref("Server"))), query=True)
    s = ("server_id",)
    add(f"{p}/servers/{{server_id}}", "get", op("Show a server", 200, wrap("server", ref("Server")), params=s))
    add(f"{p}/servers/{{server_id}}", "delete", op("Remove a server and its volumes (204)", 204, params=s, errors=ERR_WRITE))
    add(f"{p}/servers/{{server_id}}/os-volume_attachments", "get", op("The server's volumes", 200, lst("volumeAttachments", ref("VolumeAttachment")), params=s))
    add(f"{p}/servers/{{server_id}}/os-volume_attachments", "post", op("Attach an available volume of the same type (202, the volume attaching; Ganeti 3.1, else 501)", 202, wrap("volumeAttachment", ref("VolumeAttachment")), "VolumeAttachmentCreate", params=s, errors=ERR_WRITE))
    add(f"{p}/servers/{{server_id}}/os-volume_attachments/{{volume_id}}", "get", op("One of the server's volumes", 200, wrap("volumeAttachment", ref("VolumeAttachment")), params=("server_id", "volume_id")))
    add(f"{p}/servers/{{server_id}}/os-volume_attachments/{{volume_id}}", "delete", op("Detach a non-root volume (202; it becomes available; 409 on a running server without disk hotplug)", 202, params=("server_id", "volume_id"), errors=ERR_WRITE))
    add(f"{p}/flavors", "get", op("List flavors", 200, lst("flavors", ref("Flavor"))))
    add(f"{p}/flavors/detail", "get", op("List flavors in detail", 200, lst("flavors", ref("Flavor"))))
    add(f"{p}/flavors/{{flavor_id}}", "get", op("Show a flavor", 200, wrap("flavor", ref("Flavor")), params=("flavor_id",)))
    add(f"{p}/flavors/{{flavor_id}}/os-extra_specs", "get", op("A flavor's extra specs (disk template, volume type)", 200, wrap("extra_specs", S("object")), params=("flavor_id",)))
    add(f"{p}/images", "get", op("List images", 200, lst("images", ref("Image"))))
    add(f"{p}/images/detail", "get", op("List images in detail", 200, lst("images", ref("Image"))))
    add(f"{p}/images/{{image_id}}", "get", op("Show an image", 200, wrap("image", ref("Image")), params=("image_id",)))

# Glance v2-shaped image lookups: openstack (SDK) discovers /image; novaclient's
# boot --image NAME asks <compute endpoint>/v2/images?name=NAME.
add("/image", "get", op("Image API versions (Glance v2)", 200, ref("VersionList"), auth=False))
add("/image/v2", "get", op("Image API versions (Glance v2)", 200, ref("VersionList"), auth=False))
imgq = [{"name": n, "in": "query", "required": False, "schema": S("string")} for n in ["name", "limit", "marker", "status"]]
for p in ["/image/v2", "/compute/v2.1/v2", "/compute/v2.0/v2"]:
    o = op("List images, Glance v2 style (?name exact)", 200, S("object", required=["images"], properties={"images": S("array", items=ref("GlanceImage")),
                                                                                                    "first": S("string"), "schema": S("string")}))
    o["parameters"] = imgq
    add(f"{p}/images", "get", o)
    add(f"{p}/images/{{image_id}}", "get", op("Show an image, Glance v2 style", 200, ref("GlanceImage"), params=("image_id",)))

doc = {"openapi": "3.0.3",
       "info": {"title": "cyclades-api", "version": "1.0",
                "description": "Cinder-compatible volume API and compute extensions of the Cyclades registration layer. "
                               "Errors are OpenStack faults; bodies over 1 MiB are refused with 413."},
       "servers": [{"url": "http://127.0.0.1:8776"}],
       "paths": paths,
       "components": {"schemas": schemas, "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}}}}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "openapi.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=1, sort_keys=True)
    f.write("\n")
