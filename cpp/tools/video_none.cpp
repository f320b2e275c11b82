// codetr-detect without OpenCV has no video decoder: video inputs are reported as unsupported.
#include "video.h"

namespace codetr::cli {

bool is_video_input(const std::string& input) {
  // Recognised (so that they are refused with a reason rather than read as images).
  return input.find("://") != std::string::npos || input.rfind("camera:", 0) == 0;
}

VideoResult run_video(const Detector&, const std::string&, const VideoOptions&, const FrameRecord&,
                      const volatile std::sig_atomic_t*) {
  VideoResult result;
  result.error = "built without OpenCV: video and stream input is not available";
  return result;
}

}  // namespace codetr::cli
