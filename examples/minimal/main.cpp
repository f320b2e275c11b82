// Minimal use of the codetr runtime: detect on a synthetic image (no image library needed).
//   codetr_minimal MODEL_DIR
#include <codetr/codetr.h>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: codetr_minimal MODEL_DIR\n";
    return 2;
  }
  try {
    codetr::Detector detector(argv[1]);
    // A 240x320 RGB image: grey with a white square.
    const int h = 240, w = 320;
    std::vector<uint8_t> rgb(h * w * 3, 96);
    for (int y = 60; y < 180; ++y)
      for (int x = 100; x < 220; ++x)
        for (int c = 0; c < 3; ++c) rgb[(y * w + x) * 3 + c] = 255;
    const codetr::ImageView image{rgb.data(), h, w, codetr::PixelOrder::kRGB};
    const std::vector<codetr::Detection> dets = detector.detect(image);
    std::cout << dets.size() << " detections\n";
    for (size_t i = 0; i < dets.size() && i < 5; ++i)
      std::cout << detector.config().classes.at(dets[i].label) << " " << dets[i].score << " [" << dets[i].x1 << ", "
                << dets[i].y1 << ", " << dets[i].x2 << ", " << dets[i].y2 << "]\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
