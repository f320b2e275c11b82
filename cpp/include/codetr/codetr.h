#pragma once
// The codetr runtime: include this for everything.
#include "codetr/detector.h"
#include "codetr/error.h"
#include "codetr/model_config.h"
#include "codetr/postprocess.h"
#include "codetr/preprocess.h"
