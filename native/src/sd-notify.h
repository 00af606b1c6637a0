// sd-notify.h: sdNotify(state) for the addon's exports (registered in addon.cc's Init).
#ifndef NARFS_SD_NOTIFY_H
#define NARFS_SD_NOTIFY_H

#include <napi.h>

namespace narfs {

// sdNotify(state: string) → boolean. See sd-notify.cc.
Napi::Value SdNotify(const Napi::CallbackInfo& info);

}  // namespace narfs

#endif
