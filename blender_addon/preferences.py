"""Where jobs go: REMOTE (a RunPod endpoint + API key) or LOCAL (serve.py on a GPU box)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from .client import EndpointClient, EndpointError, local_base_url, remote_base_url

ADDON_ID = __package__


class Image3DPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    mode: EnumProperty(name="Mode", items=(
        ("REMOTE", "RunPod", "A RunPod serverless endpoint running this worker"),
        ("LOCAL", "Local server", "serve.py on this machine or another one on your network"),
    ), default="REMOTE")
    endpoint: StringProperty(name="Endpoint", description="RunPod endpoint id, or its full URL")
    api_key: StringProperty(name="API key", subtype="PASSWORD", description="RunPod API key")
    server_url: StringProperty(name="Server URL", default="http://127.0.0.1:8000",
                               description="The URL serve.py listens on")
    server_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="serve.py's --token, if it was started with one")
    download_dir: StringProperty(name="Download folder", subtype="DIR_PATH",
                                 description="Where models and meta.json are saved; empty: beside the .blend file "
                                             "(or the temporary folder for an unsaved file)")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "mode", expand=True)
        if self.mode == "REMOTE":
            layout.prop(self, "endpoint")
            layout.prop(self, "api_key")
            if not bpy.app.online_access:
                layout.label(text="Online access is off (Preferences > System > Network)", icon="ERROR")
        else:
            layout.prop(self, "server_url")
            layout.prop(self, "server_token")
        layout.prop(self, "download_dir")

    def client(self) -> EndpointClient:
        """A client for the chosen mode; EndpointError says what to fill in."""
        if self.mode == "REMOTE":
            if not self.api_key.strip():
                raise EndpointError("Set your RunPod API key in the add-on preferences")
            return EndpointClient(remote_base_url(self.endpoint), self.api_key)
        return EndpointClient(local_base_url(self.server_url), self.server_token or None)

    def download_folder(self) -> Path:
        if self.download_dir:
            return Path(bpy.path.abspath(self.download_dir))
        if bpy.data.filepath:
            return Path(bpy.path.abspath("//image_to_3d"))
        return Path(tempfile.gettempdir()) / "image_to_3d"


def get(context: bpy.types.Context) -> Image3DPreferences:
    return context.preferences.addons[ADDON_ID].preferences


def register() -> None:
    bpy.utils.register_class(Image3DPreferences)


def unregister() -> None:
    bpy.utils.unregister_class(Image3DPreferences)
